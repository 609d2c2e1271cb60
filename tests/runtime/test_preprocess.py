"""The runtime's numpy preprocessing equals the export side's torch reference, and refuses bad input.

Reference: pi0edge.export.preprocess_reference (openpi `resize_with_pad_torch`, `PaligemmaTokenizer.tokenize`,
docs/model.md, "Normalization"). Tokenizer: a tiny SentencePiece model trained here, shaped like PaliGemma's
(identity normalizer, no dummy prefix, "\\n" a piece of its own, digits split, pad 0 / eos 1 / bos 2).
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import sentencepiece

from pi0edge.errors import ObservationError
from pi0edge.export.preprocess_reference import (
    finish_actions_reference,
    prepare_state_reference,
    resize_with_pad_reference,
    tokenize_reference,
    uint8_to_model_float,
)
from pi0edge.normalization import NormStats
from pi0edge.runtime.preprocess import (
    STATE_BIN_EDGES,
    AssembleImages,
    FinishActions,
    PromptTokenizer,
    PromptTruncatedWarning,
    ResizeWithPad,
    assemble_images,
    clean_prompt,
    discretize_state,
    finish_actions,
    normalize_state,
    prepare_state,
    resized_hw,
)

RESIZE_MAX_LEVELS = 1.0  # within one uint8 level of the reference
NORM_ATOL = 1e-6
NORM_RTOL = 1e-6
REPO = Path(__file__).resolve().parents[2]
CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
BOS = 2

WORDS = ("pick up the red block put it in bowl open drawer close fold towel move arm left right grasp cup "
         "place on table Task State Action sponge").split()


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_model_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(300):
        text = " ".join(rng.choice(WORDS, rng.integers(2, 9)))
        bins = " ".join(str(b) for b in rng.integers(-1, 256, rng.integers(2, 9)))
        lines += [f"Task: {text}, State: {bins};\nAction: ", text.capitalize() + ".", text + "\n"]
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=300, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, hard_vocab_limit=False, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, user_defined_symbols=["\n"], split_digits=True, minloglevel=2)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def sp(sp_model_path) -> sentencepiece.SentencePieceProcessor:
    proc = sentencepiece.SentencePieceProcessor()
    proc.Load(str(sp_model_path))
    return proc


def make_stats(kind: str, convention: str, state_dim: int = 6, action_dim: int = 5, seed: int = 0) -> NormStats:
    rng = np.random.default_rng(seed)

    def vec(dim: int) -> dict:
        if kind == "mean_std":
            return {"mean": rng.normal(0, 2, dim), "std": rng.uniform(0.1, 3, dim)}
        q01 = rng.uniform(-3, 0, dim)
        q99 = q01 + rng.uniform(0.2, 4, dim)
        q99[0] = q01[0]  # a constant dim: exercises LeRobot's zero-denominator rule and openpi's eps
        return {"q01": q01, "q99": q99}

    return NormStats.from_arrays(kind, convention, vec(state_dim), vec(action_dim))


def random_prompt(rng: np.random.Generator) -> str:
    words = list(rng.choice(WORDS, rng.integers(1, 12)))
    seps = rng.choice([" ", "_", "\n", "  "], len(words))
    text = "".join(w + s for w, s in zip(words, seps, strict=True))
    return rng.choice(["", " ", "\n", "\t"]) + text + rng.choice(["", " ", "_", "\n "])


# ---- images -----------------------------------------------------------------------------------------

RESIZE_SHAPES = [(480, 640), (720, 1280), (1000, 999), (300, 224), (225, 225), (223, 224), (97, 223), (100, 50),
                 (50, 70), (7, 3), (1, 1), (224, 224)]


def test_resize_with_pad_within_one_level_of_openpi_torch_reference():
    rng = np.random.default_rng(0)
    resize = ResizeWithPad(224)
    worst = 0.0
    for h, w in RESIZE_SHAPES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = resize(image)
        assert ours.dtype == np.uint8 and ours.shape == (224, 224, 3)
        ref = resize_with_pad_reference(image, 224).numpy().astype(np.float64)
        levels = np.abs(uint8_to_model_float(ours).numpy().astype(np.float64) - ref) * 255.0 / 2.0
        worst = max(worst, float(levels.max()))
        assert levels.max() <= RESIZE_MAX_LEVELS, (h, w, levels.max())
    # Rounding a float resize to uint8 costs at most half a level; more means the sampling differs.
    assert worst < 0.51, worst


def test_resize_pad_is_uint8_zero_which_the_graph_maps_to_openpis_minus_one():
    image = np.full((480, 640, 3), 255, np.uint8)  # 4:3 -> 168x224 inside the square, 28 rows above and below
    assert resized_hw(480, 640, 224) == (168, 224)
    ours = ResizeWithPad(224)(image)
    assert (ours[:28] == 0).all() and (ours[196:] == 0).all() and (ours[28:196] == 255).all()
    ref = resize_with_pad_reference(image, 224).numpy()
    assert (ref[:28] == -1.0).all() and (ref[196:] == -1.0).all()
    assert uint8_to_model_float(np.zeros(1, np.uint8)).item() == -1.0  # exactly, not -1 + ulp


def test_resize_odd_padding_puts_the_extra_pixel_bottom_right_as_openpi():
    image = np.full((100, 50, 3), 200, np.uint8)  # 224x112 inside: 56 columns left, 56 right
    out = ResizeWithPad(224)(image)
    assert (out[:, :56] == 0).all() and (out[:, 56:168] == 200).all() and (out[:, 168:] == 0).all()
    image = np.full((224, 301, 3), 200, np.uint8)  # 166 rows inside: divmod(58, 2) = (29, 0)
    h, _ = resized_hw(224, 301, 224)
    top = (224 - h) // 2
    out = ResizeWithPad(224)(image)
    assert (out[:top] == 0).all() and (out[top:top + h] == 200).all() and (out[top + h:] == 0).all()


def test_resize_already_at_size_is_a_no_op_returning_the_same_array():
    image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert ResizeWithPad(224)(image) is image


def test_resize_broadcasts_over_leading_batch_axes():
    images = np.random.default_rng(2).integers(0, 256, (2, 3, 90, 160, 3), dtype=np.uint8)
    out = ResizeWithPad(224)(images)
    assert out.shape == (2, 3, 224, 224, 3)
    np.testing.assert_array_equal(out[1, 2], ResizeWithPad(224)(images[1, 2]))


def test_assemble_images_orders_cameras_and_masks_a_missing_one_as_zeros():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    right = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    images, masks = assemble_images({"right_wrist_0_rgb": right, "base_0_rgb": base}, CAMERAS, 224)
    assert images.shape == (3, 224, 224, 3) and images.dtype == np.uint8
    assert masks.dtype == bool and masks.tolist() == [True, False, True]
    np.testing.assert_array_equal(images[0], ResizeWithPad(224)(base))
    assert (images[1] == 0).all()  # -> all -1.0 in the graph (docs/model.md, "Prefix")
    np.testing.assert_array_equal(images[2], right)


def _bad_image_message(images: dict) -> str:
    with pytest.raises(ObservationError) as info:
        AssembleImages(CAMERAS, 224)(images)
    return str(info.value)


def test_bad_images_raise_observation_error_naming_camera_and_value():
    ok = np.zeros((48, 64, 3), np.uint8)
    msg = _bad_image_message({"base_0_rgb": ok, "front_cam": ok})
    assert "front_cam" in msg and "base_0_rgb" in msg
    msg = _bad_image_message({"base_0_rgb": ok.astype(np.float32)})
    assert "base_0_rgb" in msg and "float32" in msg
    msg = _bad_image_message({"left_wrist_0_rgb": np.zeros((48, 64, 4), np.uint8)})
    assert "left_wrist_0_rgb" in msg and "(48, 64, 4)" in msg
    msg = _bad_image_message({"left_wrist_0_rgb": np.zeros((48, 64), np.uint8)})
    assert "left_wrist_0_rgb" in msg and "(48, 64)" in msg
    msg = _bad_image_message({"right_wrist_0_rgb": np.zeros((3, 48, 64), np.uint8)})  # channels first
    assert "right_wrist_0_rgb" in msg and "(3, 48, 64)" in msg
    msg = _bad_image_message({"right_wrist_0_rgb": [[[0, 0, 0]]]})
    assert "right_wrist_0_rgb" in msg and "list" in msg
    msg = _bad_image_message({"base_0_rgb": np.zeros((0, 64, 3), np.uint8)})
    assert "base_0_rgb" in msg and "(0, 64, 3)" in msg
    msg = _bad_image_message({"base_0_rgb": np.zeros((1, 1000, 3), np.uint8)})  # would resize to 0x224
    assert "base_0_rgb" in msg and "1x1000" in msg
    msg = _bad_image_message({})
    assert "no camera" in msg and "base_0_rgb" in msg


# ---- prompt -----------------------------------------------------------------------------------------


def test_clean_prompt_strips_first_then_replaces_as_openpi():
    assert clean_prompt("  pick_up the\nred block \n") == "pick up the red block"
    assert clean_prompt("fold_towel_") == "fold towel "  # the trailing "_" is not stripped: it was not whitespace
    assert clean_prompt("\tgrasp\n\ncup ") == "grasp  cup"


def test_pi0_prompt_format_and_tokens_hand_worked(sp_model_path, sp):
    tok = PromptTokenizer(sp_model_path, 48, "pi0")
    assert tok.format_prompt("  pick_up the\nred block ") == "pick up the red block"
    tokens, mask = tok("  pick_up the\nred block ")
    body, newline = sp.encode("pick up the red block"), sp.encode("\n")
    assert newline == [sp.piece_to_id("\n")]  # the fixture, like PaliGemma's, has "\n" as one piece
    expected = [BOS, *body, *newline]
    assert tokens.dtype == np.int64 and mask.dtype == bool and tokens.shape == mask.shape == (48,)
    assert tokens[:len(expected)].tolist() == expected and (tokens[len(expected):] == 0).all()
    assert mask.tolist() == [True] * len(expected) + [False] * (48 - len(expected))


def test_pi05_prompt_format_hand_worked(sp_model_path, sp):
    tok = PromptTokenizer(sp_model_path, 200, "pi05")
    state = np.array([-1.5, -1.0, 0.0, 0.99, 1.0, 1.5], np.float32)
    text = tok.format_prompt("Pick_up cup\n", state)
    assert text == "Task: Pick up cup, State: -1 0 128 254 255 255;\nAction: "
    tokens, mask = tok("Pick_up cup\n", state)
    expected = sp.encode(text, add_bos=True)
    assert expected[0] == BOS and tokens[:len(expected)].tolist() == expected and mask.sum() == len(expected)


def test_discretize_state_edges_and_out_of_range():
    assert discretize_state(np.array([-1.5, 1.5, -1.0, 1.0, 0.0])).tolist() == [-1, 255, 0, 255, 128]
    # Each edge opens its own bin (digitize is right-open); just below an edge is the bin before.
    edges32 = STATE_BIN_EDGES.astype(np.float32)
    assert (edges32 == STATE_BIN_EDGES).all()  # dyadic: exact in float32, so float32 states see the same edges
    np.testing.assert_array_equal(discretize_state(edges32), np.arange(256))
    below = np.nextafter(edges32, np.float32(-np.inf))
    np.testing.assert_array_equal(discretize_state(below), np.arange(-1, 255))
    assert discretize_state(np.array([1 - 2 / 256, np.nextafter(1.0, 2.0)])).tolist() == [255, 255]


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_tokens_equal_openpi_reference_on_random_prompts(sp_model_path, sp, model_type):
    rng = np.random.default_rng(4)
    max_len = 48 if model_type == "pi0" else 200
    tok = PromptTokenizer(sp_model_path, max_len, model_type)
    for _ in range(60):
        prompt = random_prompt(rng)
        state = rng.uniform(-1.3, 1.3, rng.integers(1, 15)).astype(np.float32) if model_type == "pi05" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PromptTruncatedWarning)
            tokens, mask = tok(prompt, state)
        ref_tokens, ref_mask = tokenize_reference(sp, prompt, max_len, state)
        np.testing.assert_array_equal(tokens, ref_tokens)
        np.testing.assert_array_equal(mask, ref_mask)


def test_pi05_tokens_from_raw_state_equal_reference_pipeline(sp_model_path, sp):
    stats = make_stats("quantile", "openpi", state_dim=8)
    raw = np.random.default_rng(5).uniform(-4, 4, 8).astype(np.float32)  # some fall outside [q01, q99]
    tok = PromptTokenizer(sp_model_path, 200, "pi05")
    tokens, mask = tok("open the drawer", normalize_state(raw, stats))
    ref_state = prepare_state_reference(raw, stats, 8).numpy()  # unpadded at width 8
    ref_tokens, ref_mask = tokenize_reference(sp, "open the drawer", 200, ref_state)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_array_equal(mask, ref_mask)


def test_pi0_ignores_state_as_openpi_tokenize_prompt(sp_model_path):
    tok = PromptTokenizer(sp_model_path, 48, "pi0")
    a, b = tok("grasp cup"), tok("grasp cup", np.ones(3))
    np.testing.assert_array_equal(a[0], b[0])


def test_overlong_prompt_warns_and_truncates_like_reference(sp_model_path, sp):
    prompt = " ".join(["pick up the red block and put it in the bowl"] * 10)
    for model_type, max_len, state in (("pi0", 48, None), ("pi05", 20, np.zeros(6, np.float32))):
        tok = PromptTokenizer(sp_model_path, max_len, model_type)
        with pytest.warns(PromptTruncatedWarning, match=f"max_token_len {max_len}"):
            tokens, mask = tok(prompt, state)
        ref_tokens, ref_mask = tokenize_reference(sp, prompt, max_len, state)
        np.testing.assert_array_equal(tokens, ref_tokens)
        assert mask.all() and ref_mask.all() and tokens[0] == BOS
        assert tokens.tolist() == tok.token_ids(prompt, state)[:max_len]


def test_prompt_of_exactly_max_len_does_not_warn(sp_model_path):
    tok = PromptTokenizer(sp_model_path, 48, "pi0")
    n = len(tok.token_ids("pick up the red block"))
    exact = PromptTokenizer(sp_model_path, n, "pi0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens, mask = exact("pick up the red block")
    assert mask.all() and tokens.shape == (n,)


def test_batch_tokenization_stacks_rows(sp_model_path):
    tok = PromptTokenizer(sp_model_path, 200, "pi05")
    states = np.array([[0.1, -0.2], [0.5, 0.9]], np.float32)
    tokens, mask = tok.batch(["grasp cup", "fold towel"], states)
    assert tokens.shape == mask.shape == (2, 200)
    np.testing.assert_array_equal(tokens[1], tok("fold towel", states[1])[0])


@pytest.mark.parametrize("prompt", ["", "   ", "\n\n", "___", " _\n_ "])
def test_empty_prompt_raises_observation_error(sp_model_path, prompt):
    for model_type in ("pi0", "pi05"):
        with pytest.raises(ObservationError, match="prompt is empty"):
            PromptTokenizer(sp_model_path, 48, model_type)(prompt, np.zeros(2))


def test_bad_prompt_inputs_raise_observation_error(sp_model_path):
    with pytest.raises(ObservationError, match="prompt must be a str, got NoneType"):
        PromptTokenizer(sp_model_path, 48, "pi0")(None)
    tok = PromptTokenizer(sp_model_path, 200, "pi05")
    with pytest.raises(ObservationError, match="state=None"):
        tok("grasp cup")
    with pytest.raises(ObservationError, match="nan"):
        tok("grasp cup", np.array([0.0, np.nan]))


def test_pi0fast_prompt_writes_the_state_but_leaves_action_to_the_model(sp_model_path):
    tok = PromptTokenizer(sp_model_path, 200, "pi0fast")
    text = tok.format_prompt("grasp_cup", np.array([-1.0, 0.0, 0.999]))
    assert text == "Task: grasp cup, State: 0 128 255;\n"  # openpi FASTTokenizer's prefix; "Action: " is generated


def test_tokenizer_config_is_validated(sp_model_path):
    with pytest.raises(ValueError, match="pi1"):
        PromptTokenizer(sp_model_path, 48, "pi1")
    with pytest.raises(ValueError, match="max_token_len"):
        PromptTokenizer(sp_model_path, 0, "pi0")


# ---- state and actions ------------------------------------------------------------------------------

NORM_CASES = [("mean_std", "openpi"), ("quantile", "openpi"), ("mean_std", "lerobot"), ("quantile", "lerobot")]


@pytest.mark.parametrize("kind,convention", NORM_CASES)
def test_prepare_state_equals_reference_single_and_batched(kind, convention):
    stats = make_stats(kind, convention, state_dim=6)
    rng = np.random.default_rng(6)
    for shape in [(6,), (4, 6)]:
        state = rng.normal(0, 3, shape)
        ours = prepare_state(state, stats, 32)
        ref = prepare_state_reference(state, stats, 32).numpy()
        assert ours.dtype == np.float32 and ours.shape == (*shape[:-1], 32)
        assert (ours[..., 6:] == 0).all()
        np.testing.assert_allclose(ours, ref, atol=NORM_ATOL, rtol=NORM_RTOL)


@pytest.mark.parametrize("kind,convention", NORM_CASES)
def test_finish_actions_equals_reference_single_and_batched(kind, convention):
    stats = make_stats(kind, convention, action_dim=5)
    rng = np.random.default_rng(7)
    for shape in [(50, 32), (3, 50, 32)]:
        actions = rng.normal(0, 1, shape).astype(np.float32)
        ours = finish_actions(actions, stats)
        ref = finish_actions_reference(actions, stats).numpy()
        assert ours.dtype == np.float32 and ours.shape == (*shape[:-1], 5)
        np.testing.assert_allclose(ours, ref, atol=NORM_ATOL, rtol=NORM_RTOL)
    np.testing.assert_array_equal(FinishActions(stats, 5)(actions), ours)


def test_state_round_trips_through_normalization():
    stats = make_stats("mean_std", "openpi", state_dim=5, action_dim=5)
    same = NormStats(stats.kind, stats.convention, stats.state, stats.state, stats.eps)
    state = np.random.default_rng(8).normal(0, 2, 5)
    back = finish_actions(prepare_state(state, same, 32)[None], same)[0]
    np.testing.assert_allclose(back, state, atol=1e-5)


def _bad_state_message(state) -> str:
    with pytest.raises(ObservationError) as info:
        prepare_state(state, make_stats("quantile", "openpi", state_dim=6), 32)
    return str(info.value)


def test_bad_state_raises_observation_error_naming_field_and_value():
    msg = _bad_state_message(np.zeros(5))
    assert "length 5" in msg and "expected length 6" in msg
    msg = _bad_state_message(np.zeros((2, 7)))
    assert "length 7" in msg and "expected length 6" in msg
    msg = _bad_state_message(np.float32(1.0))
    assert "scalar" in msg
    msg = _bad_state_message(np.array([0, 0, np.nan, 0, 0, 0]))
    assert "state[2]" in msg and "nan" in msg
    msg = _bad_state_message(np.array([0, -np.inf, 0, 0, 0, 0]))
    assert "state[1]" in msg and "inf" in msg
    msg = _bad_state_message(np.array([0, 0, 0, 0, 0, 1e300]))  # finite in float64, inf in float32
    assert "state[5]" in msg and "1e+300" in msg
    msg = _bad_state_message(np.array([[0.0] * 6, [0, 0, 0, 0, np.nan, 0]]))
    assert "state[(1, 4)]" in msg
    msg = _bad_state_message(["a"] * 6)
    assert "numeric" in msg


def test_finish_actions_refuses_mismatched_dims():
    stats = make_stats("mean_std", "openpi", action_dim=5)
    with pytest.raises(ValueError, match="robot_action_dim 7"):
        FinishActions(stats, 7)
    with pytest.raises(ValueError, match="cropped to 5"):
        finish_actions(np.zeros((50, 4), np.float32), stats)


# ---- lean -------------------------------------------------------------------------------------------


def test_importing_runtime_preprocess_does_not_import_torch():
    code = "import sys, pi0edge.runtime.preprocess; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
