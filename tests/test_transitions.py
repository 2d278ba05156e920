"""Teacher transitions: recipe shapes, canonical states outside the blend, the musical rules
(downbeat switches, no vocal clash, one bass at a time), renders, synthetic pairs, determinism."""

import numpy as np
import pytest
import torch

from data import transitions as T
from data.analysis import TrackAnalysis
from effects.mixer import DifferentiableDJMixer
from effects.params import FULL, STEMS

SR = 44_100
N_CONTEXTS = 18  # random contexts per rule test (x 9 recipes)
NEUTRAL = FULL.neutral().numpy()


@pytest.fixture(scope="module")
def mixer():
    return DifferentiableDJMixer()


@pytest.fixture(scope="module")
def contexts():
    """Random contexts covering every vocal mode (incl. unknown and overlapping), grid mode, and
    fine (15-40 frames/s) as well as coarse (128 frames over the clip) curve grids."""
    out = []
    for i in range(N_CONTEXTS):
        rng = np.random.default_rng(1000 + i)
        vocal_mode = T.VOCAL_MODES[i % len(T.VOCAL_MODES)]
        grid_mode = "downbeats" if i % 8 else ("beats", "none")[(i // 8) % 2]
        n_frames = 128 if i % 5 == 4 else None  # some coarse grids, as the model's fixed-length curves have
        out.append(T.random_context(rng, n_frames=n_frames, vocal_mode=vocal_mode, grid_mode=grid_mode))
    return out


@pytest.fixture(scope="module", params=["random", "typical"])
def drawn(request, contexts):
    """{(context index, label): curves} for every context and recipe: random draws, then the typical
    choices (`TypicalChoices`, the 'decide' teacher); every rule test runs on both."""
    def choices(i):
        return np.random.default_rng(7 * i + 1) if request.param == "random" else T.TypicalChoices()

    return {(i, label): fn(ctx, choices(i)) for i, ctx in enumerate(contexts) for label, fn in T.RECIPES.items()}


def grid_context(bpm=200.0, lead_beats=2, blend_bars=1, tail_beats=2, fps=40.0, vocals_a=None, vocals_b=None):
    """A clip on a regular grid whose blend starts and ends on downbeats."""
    beat = 60.0 / bpm
    start = lead_beats * beat
    end = start + 4 * blend_bars * beat
    duration = end + tail_beats * beat
    beats = start + beat * np.arange(-lead_beats, int(round((duration - start) / beat)) + 1)
    downbeats = beats[(np.round((beats - start) / beat).astype(int) % 4) == 0]
    return T.TransitionContext(int(round(duration * fps)) + 1, duration, bpm, beats, downbeats, start, end,
                               vocals_a, vocals_b)


def noise_stems(n, seed, batch):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 2, n, generator=g) * 0.1


def rel_error_db(y, ref):
    return float(10 * torch.log10((y - ref).double().square().sum() / ref.double().square().sum()))


def col(name):
    return FULL.index(name)


# 1. shapes ----------------------------------------------------------------------------------------
def test_every_recipe_returns_finite_model_space_curves(contexts, drawn):
    for (i, label), c in drawn.items():
        assert c.shape == (contexts[i].n_frames, len(FULL)), label
        assert c.dtype == np.float32 and np.isfinite(c).all(), label
        assert c.min() >= 0.0 and c.max() <= 1.0, label


# 2. only A before the blend, only B after it -----------------------------------------------------------
def test_curves_outside_the_blend_are_canonical(contexts, drawn):
    a_cols = FULL.indices(track="a")
    b_cols = FULL.indices(track="b")
    sends = FULL.indices(control=["reverb_send", "delay_send"])
    for (i, label), c in drawn.items():
        ctx = contexts[i]
        t = ctx.frame_times
        before, after = c[t < ctx.blend_start - 1e-9], c[t > ctx.blend_end + 1e-9]
        for rows, playing, xf in ((before, a_cols, 0.0), (after, b_cols, 1.0)):
            if not len(rows):
                continue
            assert np.all(rows[:, col("crossfader")] == xf), label
            assert np.all(rows[:, col("master_gain")] == NEUTRAL[col("master_gain")]), label
            stem_cols = [j for j in playing if FULL.params[j].stem is not None]
            assert np.all(rows[:, stem_cols] == NEUTRAL[stem_cols]), label
            assert np.all(rows[:, sends] == 0.0), label
        levels = T.track_levels(c)
        assert np.all(levels[t < ctx.blend_start - 1e-9, 1] < 1e-6), label
        assert np.all(levels[t > ctx.blend_end + 1e-9, 0] < 1e-6), label


def test_renders_equal_a_alone_before_and_b_alone_after(mixer):
    ctx = grid_context()
    curves = torch.from_numpy(np.stack([fn(ctx, np.random.default_rng(3)) for fn in T.RECIPES.values()]))
    n = int(round(ctx.duration * SR))
    a, b = noise_stems(n, 0, len(T.RECIPES)), noise_stems(n, 1, len(T.RECIPES))
    out = T.render_transition(mixer, a, b, curves, ctx.bpm)
    assert out.shape == (len(T.RECIPES), 2, n)
    # 0.15 s margins: one STFT window (93 ms) plus a curve frame either side of the blend.
    i0, i1 = int((ctx.blend_start - 0.15) * SR), int((ctx.blend_end + 0.15) * SR)
    for k, label in enumerate(T.RECIPES):
        assert rel_error_db(out[k, :, :i0], a[k].sum(0)[:, :i0]) < -60, label
        assert rel_error_db(out[k, :, i1:], b[k].sum(0)[:, i1:]) < -60, label


# 3. the musical rules ---------------------------------------------------------------------------------
def test_no_two_vocals_audible_at_once(contexts, drawn):
    for (i, label), c in drawn.items():
        assert T.vocal_overlap(c, contexts[i]) == 0.0, (label, i, contexts[i].vocals_a, contexts[i].vocals_b)


def test_unknown_vocals_wait_until_the_outgoing_vocal_is_out():
    ctx = grid_context(bpm=128.0, blend_bars=8, fps=25.0)  # vocals None on both sides
    thr = 10 ** (T.VOCAL_THRESHOLD_DB / 20)
    for label, fn in T.RECIPES.items():
        for seed in range(3):
            amp = T.vocal_amplitudes(fn(ctx, np.random.default_rng(seed)))
            a_on, b_on = np.flatnonzero(amp[:, 0] > thr), np.flatnonzero(amp[:, 1] > thr)
            assert a_on.max() < b_on.min(), label  # B's vocal comes up only after A's is gone


def test_overlapping_vocals_get_ducked():
    ctx = grid_context(bpm=124.0, blend_bars=8, fps=25.0, vocals_a=[(0.0, 14.0)], vocals_b=[(6.0, 30.0)])
    for label, fn in T.RECIPES.items():
        c = fn(ctx, np.random.default_rng(5))
        assert T.vocal_overlap(c, ctx) == 0.0, label
    # The measure does see a clash: a plain crossfade leaves both vocals up in the middle.
    plain = FULL.neutral_curves(ctx.n_frames).numpy()
    plain[:, col("crossfader")] = np.clip((ctx.frame_times - ctx.blend_start) / ctx.blend_length, 0, 1)
    assert T.vocal_overlap(plain, ctx) > 0.1


def test_never_two_full_basses(contexts, drawn):
    for (i, label), c in drawn.items():
        ctx = contexts[i]
        assert T.bass_overlap(c, ctx) == 0.0, (label, i)
        over = T.bass_amplitudes(c).sum(-1) > T.BASS_LIMIT
        longest = max((stop - start for start, stop in T._runs(over)), default=0)
        assert (longest - 1) * ctx.frame_step <= ctx.beat + 1e-9, (label, i)


def test_bass_overlap_flags_a_plain_crossfade():
    ctx = grid_context(bpm=124.0, blend_bars=4, fps=25.0)
    plain = FULL.neutral_curves(ctx.n_frames).numpy()
    plain[:, col("crossfader")] = np.clip((ctx.frame_times - ctx.blend_start) / ctx.blend_length, 0, 1)
    assert T.bass_overlap(plain, ctx) > 0.2
    assert abs(T.bass_handover_time(plain, ctx) - ctx.at(0.5)) <= ctx.frame_step


def test_bass_handover_lands_on_a_downbeat(contexts, drawn):
    for (i, label), c in drawn.items():
        ctx = contexts[i]
        handover = T.bass_handover_time(c, ctx)
        assert np.isfinite(handover), (label, i)
        assert ctx.blend_start - ctx.frame_step <= handover <= ctx.blend_end + ctx.frame_step, (label, i)
        if len(ctx.downbeats):
            assert np.min(np.abs(ctx.downbeats - handover)) <= ctx.frame_step, (label, i, handover)


def _switch_time(up, down, t):
    """Clip time of the first frame where `up` has reached `down` (the switch of a step or a swap)."""
    return t[int(np.flatnonzero(up - down >= 0)[0])]


def test_stem_switches_land_on_downbeats(contexts, drawn):
    switches = {  # recipe: (rising, falling) curve pairs whose crossing is a switch
        "stem_handover": [("b.drums.gain", "a.drums.gain"), ("b.vocals.gain", None)],
        "hard_cut": [("crossfader", 0.5)],
        "echo_out": [(0.5, "a.drums.gain"), (0.5, "a.other.gain")],
    }
    for i, ctx in enumerate(contexts):
        if not len(ctx.downbeats):
            continue
        t = ctx.frame_times
        for label, pairs in switches.items():
            c = drawn[(i, label)]
            for up, down in pairs:
                values = [c[:, col(v)] if isinstance(v, str) else np.full(len(t), v if v is not None else 1e-6)
                          for v in (up, down)]
                switch = _switch_time(*values, t)
                assert np.min(np.abs(ctx.downbeats - switch)) <= ctx.frame_step + 1e-9, (label, up, down, i)


def test_hard_cut_has_no_overlap(contexts, drawn):
    for i in range(len(contexts)):
        levels = T.track_levels(drawn[(i, "hard_cut")])
        assert np.all(levels.min(axis=1) < 1e-6), i
        assert np.all(np.isclose(levels.max(axis=1), 1.0, atol=1e-6)), i


def test_echo_out_leaves_a_tail_over_b(mixer):
    ctx = grid_context(bpm=170.0, lead_beats=2, blend_bars=2, tail_beats=2, fps=30.0)
    c = T.echo_out(ctx, np.random.default_rng(2))
    t = ctx.frame_times
    cut = _switch_time(np.full(len(t), 0.5), c[:, col("a.drums.gain")], t)
    dry = c.copy()
    dry[:, col("a.delay_send")] = 0.0  # the same transition without the echo
    n = int(round(ctx.duration * SR))
    a = noise_stems(n, 4, 1).expand(2, -1, -1, -1)
    out = T.render_transition(mixer, a, torch.zeros_like(a), torch.from_numpy(np.stack([c, dry])), ctx.bpm)
    tail = slice(int((cut + 0.15) * SR), int((cut + ctx.beat) * SR))
    before = slice(int(ctx.blend_start * SR), int((cut - 0.1) * SR))

    def rms_db(x):
        return float(10 * torch.log10(x.double().square().mean()))

    assert rms_db(out[0, :, tail]) > rms_db(out[0, :, before]) - 30  # echoes of A ring after the cut
    assert rms_db(out[1, :, tail]) < rms_db(out[1, :, before]) - 60  # and nothing else does


# 4. labels, mixture, determinism ---------------------------------------------------------------------
def test_recipes_are_deterministic_given_the_rng(contexts):
    ctx = contexts[1]
    for label, fn in T.RECIPES.items():
        assert np.array_equal(fn(ctx, np.random.default_rng(9)), fn(ctx, np.random.default_rng(9))), label
    variants = {T.bass_swap(ctx, np.random.default_rng(s)).tobytes() for s in range(6)}
    assert len(variants) > 1  # randomised within the rules


def test_typical_choices_are_the_heaviest_middle_and_first_options():
    c = T.TypicalChoices()
    assert c.choice(4, p=[0.1, 0.4, 0.4, 0.1]) == 1  # heaviest, ties to the middle (then the earlier)
    assert c.choice(5, p=[0.3, 0.1, 0.3, 0.0, 0.3]) == 2
    assert list(c.choice(5, size=2, replace=False, p=[0.3, 0.1, 0.3, 0.0, 0.3])) == [2, 0]
    assert c.choice(["power", "smooth"]) == "power" and c.choice([1, 2, 4]) == 1
    assert c.uniform(0.25, 1.0) == 0.625 and c.random() == 0.0 and c.integers(2) == 0 and c.integers(1, 3) == 1


def test_typical_choices_make_the_curves_a_function_of_the_music(contexts):
    ctx = contexts[1]
    for label, fn in T.RECIPES.items():
        assert np.array_equal(fn(ctx, T.TypicalChoices()), fn(ctx, T.TypicalChoices())), label
    # the teacher ignores its rng, and the vocals (the music) still move the vocal handover
    first = T.teacher_curves(ctx, np.random.default_rng(0), "echo_out", typical=True)
    second = T.teacher_curves(ctx, np.random.default_rng(1), "echo_out", typical=True)
    assert np.array_equal(first[1], second[1])
    early = grid_context(bpm=124.0, blend_bars=8, fps=25.0, vocals_a=[(0.0, 5.0)], vocals_b=[(3.0, 30.0)])
    late = grid_context(bpm=124.0, blend_bars=8, fps=25.0, vocals_a=[(0.0, 15.5)], vocals_b=[(13.0, 30.0)])
    handover = [T.bass_swap(c, T.TypicalChoices())[:, col("b.vocals.gain")] for c in (early, late)]
    rise = [c.frame_times[np.flatnonzero(h < 1e-6)[-1]] for c, h in zip((early, late), handover)]
    assert rise[1] - rise[0] > 2 * 4 * 60.0 / 124.0  # B's vocal comes in bars later when A sings longer
    for c, r in zip((early, late), rise):
        assert T.vocal_overlap(T.bass_swap(c, T.TypicalChoices()), c) == 0.0 and r >= c.blend_start


def test_the_typical_bass_swap_hands_the_lows_over_with_the_eqs_alone():
    ctx = grid_context(bpm=124.0, blend_bars=8, fps=25.0)
    typical = T.bass_swap(ctx, T.TypicalChoices())
    for track in "ab":  # the bass faders stay up; every stem's low EQ swaps
        fader = col(f"{track}.bass.gain")
        assert np.all(typical[:, fader] == T._NEUTRAL_U[fader])
    assert typical[-1, col("a.bass.eq_low")] == 0.0 and typical[0, col("b.bass.eq_low")] == 0.0
    assert T.bass_overlap(typical, ctx) == 0.0
    # random draws keep both variants, with the same stream as a plain `random() < 0.5`
    moved = [np.ptp(T.bass_swap(ctx, np.random.default_rng(s))[:, col("a.bass.gain")]) > 0.5 for s in range(12)]
    assert any(moved) and not all(moved)
    assert T._coin(np.random.default_rng(3), 0.5, typical=False) == (np.random.default_rng(3).random() < 0.5)
    assert T._coin(T.TypicalChoices(), 0.5, typical=False) is False


def test_sample_recipe_honours_weights():
    rng = np.random.default_rng(0)
    weights = {"hard_cut": 1.0, "echo_out": 3.0, "bass_swap": 0.0}
    draws = [T.sample_recipe(rng, weights) for _ in range(800)]
    assert set(draws) == {"hard_cut", "echo_out"}
    assert 0.68 < draws.count("echo_out") / len(draws) < 0.82
    assert set(T.sample_recipe(rng) for _ in range(400)) == set(T.RECIPES)  # default mixture covers all
    for bad in ({"nope": 1.0}, {"hard_cut": -1.0}, {"hard_cut": 0.0}, {"hard_cut": float("nan")}):
        with pytest.raises(ValueError):
            T.sample_recipe(rng, bad)


def test_select_recipe_keeps_the_best_draw_by_the_score(contexts):
    ctx = contexts[0]
    b_level = lambda drafts: [float(T.track_levels(u)[:, 1].mean()) for u in drafts]  # noqa: E731  "B early"
    label, curves, scores = T.select_recipe(ctx, b_level, np.random.default_rng(3))
    assert set(scores) == set(T.SELECTION_LABELS) and scores[label] == max(scores.values())
    assert b_level([curves])[0] == pytest.approx(scores[label])
    again = T.select_recipe(ctx, b_level, np.random.default_rng(3))
    assert again[0] == label and np.array_equal(again[1], curves)  # deterministic given the rng
    # the judge decides: flip the measure and the choice follows it
    label_late, _, _ = T.select_recipe(ctx, lambda d: [-v for v in b_level(d)], np.random.default_rng(3))
    assert scores[label_late] == min(scores.values())
    nan_first = lambda drafts: [float("nan")] + [1.0] * (len(drafts) - 1)  # noqa: E731  NaN never wins
    assert T.select_recipe(ctx, nan_first, np.random.default_rng(0), ("hard_cut", "bass_swap"))[0] == "bass_swap"
    with pytest.raises(ValueError, match="recipe"):
        T.select_recipe(ctx, b_level, np.random.default_rng(0), ("nope",))


def test_pair_from_tracks_with_the_quality_judge():
    from dataset import quality_judge
    from evaluate import composite_scorer

    track = T.generate_pair(4, track_duration=14.0, blend_bars=2, lead_bars=1, tail_bars=1, n_frames=64)
    pair = T.generate_pair(4, track_duration=14.0, blend_bars=2, lead_bars=1, tail_bars=1, n_frames=64,
                           select=quality_judge)
    assert pair.label in T.SELECTION_LABELS and set(pair.info["teacher_scores"]) == set(T.SELECTION_LABELS)
    assert np.array_equal(pair.stems_a, track.stems_a)  # same clip, only the teacher differs
    judged = composite_scorer(pair.stems_a, pair.stems_b, pair.context)([pair.curves])[0]
    assert judged == pytest.approx(max(pair.info["teacher_scores"].values()), abs=1e-9)


# 5. contexts, pairs and renders -----------------------------------------------------------------------
def test_context_from_analyses_maps_track_times_to_clip_time():
    a = TrackAnalysis(duration=40.0, bpm=120.0, beats=np.arange(0.25, 40, 0.5), downbeats=np.arange(0.25, 40, 2.0),
                      key_index=0, key_confidence=1.0, energy=np.zeros(400), energy_rate=10.0, lufs=-10.0,
                      vocal_activity=[(20.0, 30.0)])
    b = {"duration": 40.0, "bpm": 120.0, "beats": list(np.arange(0.1, 40, 0.5)),
         "downbeats": list(np.arange(0.1, 40, 2.0)), "vocal_activity": None}
    ctx = T.context_from_analyses(a, b, offset_a=20.25, offset_b=-3.9, duration=16.0, blend_start=4.0,
                                  blend_end=12.0, n_frames=161)
    assert ctx.bpm == 120.0 and ctx.vocals_b is None
    assert ctx.vocals_a == [(0.0, 9.75)]
    assert np.allclose(ctx.downbeats, np.arange(0.0, 16.0 + 1e-9, 2.0))  # A's grid, then B's (same phase)
    assert np.allclose(np.diff(ctx.beats), 0.5)
    again = T.TransitionContext.from_dict(ctx.to_dict())
    assert np.array_equal(again.beats, ctx.beats) and again.vocals_a == ctx.vocals_a


def test_generate_pair_builds_a_labelled_beatmatched_clip(mixer):
    pair = T.generate_pair(11, track_duration=12.0, blend_bars=2, lead_bars=1, tail_bars=1, frame_rate=20.0)
    again = T.generate_pair(11, track_duration=12.0, blend_bars=2, lead_bars=1, tail_bars=1, frame_rate=20.0)
    ctx, n = pair.context, pair.stems_a.shape[-1]
    assert pair.label in T.RECIPES and pair.info["recipe"] == pair.label
    assert pair.label == again.label and np.array_equal(pair.curves, again.curves)
    assert np.array_equal(pair.stems_b, again.stems_b)
    assert pair.stems_a.shape == pair.stems_b.shape == (len(STEMS), 2, n) and n == round(ctx.duration * SR)
    assert pair.curves.shape == (ctx.n_frames, len(FULL))
    bar = 240.0 / pair.bpm
    assert np.isclose(ctx.blend_start, bar) and np.isclose(ctx.blend_length, 2 * bar)
    assert np.min(np.abs(ctx.downbeats - ctx.blend_start)) < 1e-6  # the blend starts on a downbeat
    assert T.vocal_overlap(pair.curves, ctx) == 0.0 and T.bass_overlap(pair.curves, ctx) == 0.0
    out = pair.render(mixer)
    i0, i1 = int((ctx.blend_start - 0.15) * SR), int((ctx.blend_end + 0.15) * SR)
    a, b = torch.from_numpy(pair.stems_a.sum(0)), torch.from_numpy(pair.stems_b.sum(0))
    assert rel_error_db(out[:, :i0], a[:, :i0]) < -60
    assert rel_error_db(out[:, i1:], b[:, i1:]) < -60


def test_pair_from_tracks_cues_forced_labels_and_errors():
    grid = {"duration": 30.0, "bpm": 120.0, "beats": list(np.arange(0.3, 30, 0.5)),
            "downbeats": list(np.arange(0.3, 30, 2.0)), "vocal_activity": None,
            "sections": [{"start": 0.0}, {"start": 8.3}, {"start": 16.3}, {"start": 24.3}]}
    stems = np.zeros((4, 2, 30 * SR), dtype=np.float32)
    pair = T.pair_from_tracks(stems, grid, stems, grid, np.random.default_rng(0), blend_bars=(4, 16), lead_bars=1,
                              tail_bars=1, label="hard_cut")
    assert pair.label == "hard_cut" and pair.info["blend_bars"] == 4  # 16 bars do not fit in 30 s
    assert pair.info["a_cue"] == pytest.approx(16.3)  # the latest section start that leaves room for the blend
    assert pair.info["b_cue"] == pytest.approx(0.3)  # B's first downbeat
    assert pair.context.blend_start == pytest.approx(2.0) and pair.context.blend_end == pytest.approx(10.0)
    with pytest.raises(ValueError, match="tempo"):
        T.pair_from_tracks(stems, grid, stems, {**grid, "bpm": 126.0}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="too short"):
        T.pair_from_tracks(stems, {**grid, "duration": 3.0}, stems, grid, np.random.default_rng(0))


# 6. the deciding teacher ------------------------------------------------------------------------------
def _a_stems(ctx, parts, vocal_late=0.0):
    """A's [4, 2, N] stems: drum noise at `parts` amplitudes (before, early, late, after the blend's
    two halves), its vocal stem at `vocal_late` over the blend's second half."""
    n = int(round(ctx.duration * SR))
    t = np.arange(n) / SR
    mid = 0.5 * (ctx.blend_start + ctx.blend_end)
    region = np.digitize(t, [ctx.blend_start, mid, ctx.blend_end])
    rng = np.random.default_rng(0)
    stems = np.zeros((4, 2, n), np.float32)
    stems[0] = 0.1 * rng.standard_normal((2, n)) * np.asarray(parts)[region]
    stems[2] = 0.1 * rng.standard_normal((2, n)) * vocal_late * ((t >= mid) & (t < ctx.blend_end))
    return stems


@pytest.mark.parametrize("parts, vocal, expected", [
    ((1.0, 1.0, 0.0, 0.0), 0.3, "echo_out"),  # A still sings late in the blend
    ((1.0, 1.5, 1.5, 0.0), 0.0, "filter_sweep"),  # A does not thin out
    ((1.0, 0.7, 0.4, 0.0), 0.0, "bass_swap"),  # an outro into an intro
    ((1.0, 0.7, 0.4, 0.0), 0.01, "bass_swap"),  # a vocal 40 dB down is not singing
])
def test_choose_recipe_reads_the_move_off_the_stems(parts, vocal, expected):
    ctx = grid_context(bpm=128.0, lead_beats=8, blend_bars=4, tail_beats=8, fps=25.0)
    stems = _a_stems(ctx, parts, vocal)
    label, facts = T.choose_recipe(stems, ctx)
    assert label == expected, facts
    assert set(facts) == {"a_vocal_late", "a_late"} and all(np.isfinite(list(facts.values())))
    assert T.choose_recipe(np.zeros_like(stems), ctx)[0] == "bass_swap"  # silence: no crash, a blend


def test_a_deciding_teacher_gives_the_same_pair_whatever_its_rng():
    kwargs = dict(track_duration=14.0, blend_bars=2, lead_bars=1, tail_bars=1, n_frames=64, decide=True)
    first, second = T.generate_pair(4, **kwargs), T.generate_pair(4, **kwargs)
    assert first.label == T.choose_recipe(first.stems_a, first.context)[0]
    assert first.info["teacher_facts"] == second.info["teacher_facts"] and np.array_equal(first.curves, second.curves)
    typical = T.RECIPES[first.label](first.context, T.TypicalChoices())
    ridden = T.ride_gain(typical, first.stems_a, first.stems_b, first.context)
    assert np.array_equal(first.curves, ridden)  # the typical recipe, then the master ridden
    assert first.info["teacher_ride_db"] == pytest.approx(
        float((ridden - typical)[:, T._COL["master_gain"]].max() * 32.0), abs=0.01)


# 7. gain riding ---------------------------------------------------------------------------------------
def _noise_clip(ctx, level_a, level_b, vocals=False):
    """[4, 2, N] stems of A and B: steady noise at the given amplitudes (in the drum stem, and with vocals=True
    the same again in the vocal stem), each track over the whole clip."""
    n = int(round(ctx.duration * SR))
    rng = np.random.default_rng(3)
    out = []
    for level in (level_a, level_b):
        stems = np.zeros((4, 2, n), np.float32)
        stems[0] = level * 0.1 * rng.standard_normal((2, n))
        if vocals:
            stems[2] = level * 0.1 * rng.standard_normal((2, n))
        out.append(stems)
    return out


def _dip_db(mixer, a, b, curves, ctx):
    import evaluate

    return evaluate.score_curves(mixer, a, b, [curves], ctx.bpm, (ctx.blend_start, ctx.blend_end))[0][
        "loudness_dip_db"]


def test_ride_gain_fills_the_dip_of_a_cut_into_a_quieter_track(mixer):
    import evaluate

    ctx = grid_context(bpm=120.0, lead_beats=8, blend_bars=4, tail_beats=8, fps=10.0)
    a, b = _noise_clip(ctx, 1.0, 0.5)  # B 6 dB below A
    cut = evaluate.hard_cut_curves(ctx.n_frames, ctx.duration, (ctx.blend_start, ctx.blend_end), ctx.downbeats)
    cut = cut.numpy()
    ridden = T.ride_gain(cut, a, b, ctx, mixer=mixer)
    before, after = _dip_db(mixer, a, b, cut, ctx), _dip_db(mixer, a, b, ridden, ctx)
    assert before > 3.0 and after < 0.5, (before, after)  # the energy-fair path asks for ~4 dB right after the cut
    master = T._COL["master_gain"]
    outside = (ctx.frame_times <= ctx.blend_start) | (ctx.frame_times >= ctx.blend_end)
    assert np.array_equal(ridden[outside], cut[outside])  # canonical outside the blend
    assert np.array_equal(np.delete(ridden, master, axis=1), np.delete(cut, master, axis=1))  # only the master
    assert (ridden[:, master] >= cut[:, master]).all() and ridden[:, master].max() <= 1.0  # up only, <= +6 dB


def test_ride_gain_leaves_a_level_handover_alone(mixer):
    import evaluate

    ctx = grid_context(bpm=120.0, lead_beats=8, blend_bars=4, tail_beats=8, fps=10.0)
    a, b = _noise_clip(ctx, 1.0, 1.0)
    fade = evaluate.equal_power_curves(ctx.n_frames, ctx.duration, (ctx.blend_start, ctx.blend_end)).numpy()
    ridden = T.ride_gain(fade, a, b, ctx, mixer=mixer)
    lift = (ridden - fade)[:, T._COL["master_gain"]] * 32.0
    assert lift.max() < 0.5  # an equal-power fade of equal tracks holds its level: nothing to ride
    silent = [np.zeros_like(a), np.zeros_like(b)]
    assert np.array_equal(T.ride_gain(fade, *silent, ctx, mixer=mixer), fade)  # silence: nothing to follow


def test_ride_gain_keeps_the_vocal_and_bass_rules(mixer):
    import evaluate

    ctx = grid_context(bpm=120.0, lead_beats=8, blend_bars=4, tail_beats=8, fps=10.0)
    mid = 0.5 * (ctx.blend_start + ctx.blend_end)
    ctx.vocals_a, ctx.vocals_b = [(0.0, ctx.duration)], [(mid, ctx.duration)]  # both sing in the second half
    a, b = _noise_clip(ctx, 1.0, 1.0, vocals=True)
    linear = evaluate.linear_crossfade_curves(ctx.n_frames, ctx.duration, (ctx.blend_start, ctx.blend_end)).numpy()
    master = T._COL["master_gain"]
    both_basses = T.ride_gain(linear, a, b, ctx, mixer=mixer)
    lift = (both_basses - linear)[:, master] * 32.0
    sounding = (T.bass_amplitudes(linear) > 0.3).all(axis=-1)
    assert lift.max() > 0.5 and lift[sounding].max() < 0.9  # the linear fade's dip is ridden, but not where ...
    assert T.bass_overlap(both_basses, ctx) == T.bass_overlap(linear, ctx) == 0.0  # ... it would make two full basses

    linear[:, T._COL["a.bass.gain"]] = 0.0  # one bass: the ride is free of the bass rule
    linear[:, T._COL["a.vocals.gain"]] = 0.18  # A's vocal 0.09 of full mid-blend: just under the -20 dB line
    assert T.vocal_overlap(linear, ctx) == 0.0
    ridden = T.ride_gain(linear, a, b, ctx, mixer=mixer)
    assert (ridden - linear)[:, master][sounding].max() * 32.0 > 2.0  # lifted where both basses had held it...
    assert T.vocal_overlap(ridden, ctx) == 0.0  # ... but not so far that A's vocal becomes audible over B's



def test_nearest_recipe_names_the_move_that_curves_play(contexts, drawn):
    """Every recipe's typical curves are nearest to their own label, random draws of the details mostly too (the
    name params.json gives a move that the model's sampler chose itself); `labels` limits the names."""
    for ctx in contexts:
        for label, fn in T.RECIPES.items():
            assert T.nearest_recipe(fn(ctx, T.TypicalChoices()), ctx) == label
    right = [T.nearest_recipe(curves, contexts[i]) == label for (i, label), curves in drawn.items()]
    assert np.mean(right) >= 0.85  # measured 0.91 over three random draws per context and recipe
    fades = ("linear_fade", "equal_power_fade")
    assert T.nearest_recipe(T.RECIPES["bass_swap"](contexts[1], T.TypicalChoices()), contexts[1], fades) in fades
