"""Shared synthetic data for the calibration tests: rendered once per session, written to temp folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from calib_synth import CHARUCO, CHESSBOARD, Renderer, fisheye_camera, pinhole_camera, write_views

from pi0edge.calibration.boards import parse_board


@pytest.fixture(scope="session")
def charuco_renderer() -> Renderer:
    return Renderer(pinhole_camera(), parse_board(CHARUCO))


@pytest.fixture(scope="session")
def charuco_folder(tmp_path_factory, charuco_renderer) -> Path:
    """20 views of a ChArUco board (some partial) by a distorted pinhole camera."""
    rng = np.random.default_rng(2)
    poses = [charuco_renderer.random_pose(rng, (0.25, 0.5), 45.0, min_visible=0.8) for _ in range(20)]
    folder = tmp_path_factory.mktemp("charuco_views")
    write_views(folder, charuco_renderer, poses, seed=3)
    return folder


@pytest.fixture(scope="session")
def chessboard_folder(tmp_path_factory) -> tuple[Path, Renderer]:
    renderer = Renderer(pinhole_camera(), parse_board(CHESSBOARD))
    rng = np.random.default_rng(4)
    poses = [renderer.random_pose(rng, (0.35, 0.6), 40.0) for _ in range(18)]
    folder = tmp_path_factory.mktemp("chessboard_views")
    write_views(folder, renderer, poses, seed=5)
    return folder, renderer


@pytest.fixture(scope="session")
def fisheye_folder(tmp_path_factory) -> tuple[Path, Renderer]:
    renderer = Renderer(fisheye_camera(), parse_board(CHARUCO))
    rng = np.random.default_rng(6)
    poses = [renderer.random_pose(rng, (0.13, 0.25), 45.0, min_visible=0.8) for _ in range(22)]
    folder = tmp_path_factory.mktemp("fisheye_views")
    write_views(folder, renderer, poses, seed=7)
    return folder, renderer
