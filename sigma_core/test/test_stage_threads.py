"""Parts of a CPU forward on two threads (models/stage_threads.py): small models' fusion stages and first decoder
stages."""
import gc
import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import torch
from forked_child import assert_forked_child_runs

from sigma_core import SigmaConfig, build_sigma, load_weights
from sigma_core.models import sigma as sigma_module
from sigma_core.models.decoder import MambaDecoder
from sigma_core.models.sigma import SigmaBackbone
from sigma_core.models.stage_threads import hand_over, may_run_apart, run_apart


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _thread_and_count():
    return threading.get_ident(), torch.get_num_threads()


def test_the_parts_run_at_once_each_on_its_share_and_the_caller_gets_its_count_back():
    before = torch.get_num_threads()
    torch.set_num_threads(5)
    try:
        meet = threading.Barrier(2, timeout=30)  # each part waits for the other: only passes if both run at once

        def part():
            meet.wait()
            return _thread_and_count()

        with torch.no_grad():
            (helper_thread, helper_threads), (own_thread, own_threads) = run_apart(part, part)
        assert own_thread == threading.get_ident() != helper_thread
        assert (helper_threads, own_threads) == (2, 3)
        assert torch.get_num_threads() == 5
        started_after = []
        thread = threading.Thread(target=lambda: started_after.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert started_after == [5]  # threads started later begin with the caller's count, not a share
    finally:
        torch.set_num_threads(before)


def test_a_thread_first_using_torch_while_the_parts_run_begins_with_the_callers_count(two_threads):
    # torch.set_num_threads also sets the default that threads take on their first torch call: run_apart puts it
    # back to the caller's count at once, so a thread whose first call falls while the parts run still gets 2.
    seen = []

    def start_a_thread():
        threading.Event().wait(0.1)
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()

    with torch.no_grad():
        run_apart(lambda: threading.Event().wait(0.3), start_a_thread)
        run_apart(start_a_thread, lambda: threading.Event().wait(0.3))
    assert seen == [2, 2]


def test_the_helpers_take_the_callers_inference_mode_and_cpu_autocast(two_threads):
    a = torch.randn(8, 8)

    def part():
        y = a @ a
        return y.dtype, y.is_inference(), torch.is_grad_enabled()

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        first, second = run_apart(part, part)
    assert first == second == (torch.bfloat16, True, False)
    with torch.no_grad():
        first, second = run_apart(part, part)
    assert first == second == (torch.float32, False, False)


@pytest.mark.parametrize("failing", [("helper",), ("own",), ("helper", "own")])
def test_an_exception_is_raised_once_both_parts_ended_the_helpers_where_both_fail(two_threads, failing):
    ended = []

    def part(name):
        def run():
            threading.Event().wait(0.1)
            ended.append(name)
            if name in failing:
                raise RuntimeError(f"{name} part failed")
        return run

    with torch.no_grad(), pytest.raises(RuntimeError, match=f"{failing[0]} part failed"):
        run_apart(part("helper"), part("own"))
    assert sorted(ended) == ["helper", "own"]  # neither runs on past the call
    assert torch.get_num_threads() == 2


def test_ctrl_c_while_the_helper_part_runs_is_raised_once_it_ended(two_threads):
    ended = []

    def slow():
        threading.Event().wait(1.0)
        ended.append("helper")

    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with torch.no_grad(), pytest.raises(KeyboardInterrupt):
            run_apart(slow, lambda: None)
    finally:
        timer.cancel()
    assert ended == ["helper"]
    assert torch.get_num_threads() == 2


def test_two_callers_do_not_wait_on_each_others_parts(two_threads):
    # One caller's part blocks until the other caller's parts have run: with helpers shared between callers,
    # the second caller's parts would wait behind the first's forever.
    second_done = threading.Event()
    results = {}

    def caller(name, part):
        torch.set_num_threads(2)
        with torch.no_grad():
            results[name] = run_apart(part, part)

    def blocked():
        return second_done.wait(30)

    first = threading.Thread(target=caller, args=("first", blocked))
    first.start()
    caller("second", lambda: 2)
    second_done.set()
    first.join(60)
    assert results == {"first": (True, True), "second": (2, 2)}


def test_a_callers_helper_ends_with_the_caller(two_threads):
    def helpers():
        return sum(thread.name.startswith("sigma-stage") for thread in threading.enumerate())

    gc.collect()  # helpers of callers that ended in earlier tests end now
    threading.Event().wait(0.2)
    before = helpers()

    def caller():
        torch.set_num_threads(2)
        with torch.no_grad():
            run_apart(lambda: 1, lambda: 2)

    for _ in range(5):
        thread = threading.Thread(target=caller)
        thread.start()
        thread.join()
    gc.collect()
    for _ in range(100):
        if helpers() <= before:
            break
        threading.Event().wait(0.05)
    assert helpers() <= before  # not the 5 callers' helpers


def test_the_default_for_new_threads_is_the_callers_next_setting_not_a_late_restore(monkeypatch):
    # The thread that puts torch's default back after a share was set must not land after the caller's own next
    # torch.set_num_threads: made slow here, run_apart must still have waited for it.
    from sigma_core.models import stage_threads

    slow = ThreadPoolExecutor(max_workers=1)

    class SlowKeeper:
        def submit(self, fn, *args):
            return slow.submit(lambda: (threading.Event().wait(0.05), fn(*args)))

    monkeypatch.setattr(stage_threads, "_default_keeper", SlowKeeper())
    before = torch.get_num_threads()
    a = torch.randn(64, 64)
    seen = []
    try:
        for count in (2, 4, 2, 4):
            torch.set_num_threads(count)
            with torch.no_grad():
                run_apart(lambda: a @ a, lambda: a @ a)
            torch.set_num_threads(3)
            threading.Event().wait(0.1)  # a restore still queued would land meanwhile
            thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            thread.start()
            thread.join()
    finally:
        torch.set_num_threads(before)
        slow.shutdown()
    assert seen == [3, 3, 3, 3]


def test_parts_run_apart_only_in_untraced_unprofiled_cpu_inference_on_two_or_more_threads(two_threads):
    x = torch.zeros(2)
    with torch.no_grad():
        assert may_run_apart(x)
        torch.set_num_threads(1)
        assert not may_run_apart(x)
        torch.set_num_threads(2)
        assert not may_run_apart(torch.zeros(2, device="meta"))
        with torch.device("meta"):  # a function mode: the ops are being rewritten
            assert not may_run_apart(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
            assert not may_run_apart(x)  # it records the calling thread's ops only
        # torch.func's transforms are per thread too: the helper's part would run untransformed (a wrong jvp)
        seen = []
        torch.func.vmap(lambda row: seen.append(may_run_apart(row)) or row)(torch.zeros(3, 2))
        torch.func.jvp(lambda t: seen.append(may_run_apart(t, x)) or t, (x,), (x,))
        torch.func.jvp(lambda t: seen.append(may_run_apart(x)) or t, (x,), (x,))  # a transform, on other inputs
        assert seen == [False, False, False]
        assert not may_run_apart(x, _LoggingTensor(x))  # a subclass would see the ops on two threads
        assert may_run_apart(x)
    assert not may_run_apart(x)  # a gradient may be wanted


class _LoggingTensor(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


def test_training_mode_runs_in_turn_without_a_gradient_too(two_threads, monkeypatch):
    # DropPath draws from torch's one generator: on two threads at once the draws would go to either modality.
    model = _small_model(32).train()
    calls = _counting_run_apart(monkeypatch)
    image = torch.randn(1, 3, 480, 640)
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(image, image.flip(2))
        torch.manual_seed(1)
        assert torch.equal(model(image, image.flip(2)), first)
        model.eval()
        model.backbone.vssm.layers[0].blocks[0].drop_path.train()  # one module drawing (MC dropout, say) is enough
        model(image, image)
    assert calls == []


def test_a_forward_patched_on_the_backbone_or_decoder_class_runs(two_threads, monkeypatch):
    model = _small_model(32)
    calls = _counting_run_apart(monkeypatch)
    seen = []
    for cls in (SigmaBackbone, MambaDecoder):
        real = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, *args, real=real: seen.append(type(self)) or real(self, *args))
    image = torch.randn(1, 3, 180, 240)
    with torch.inference_mode():
        model(image, image)
    assert calls == [] and seen == [SigmaBackbone, MambaDecoder]


def test_on_the_helper_thread_itself_parts_do_not_run_apart():
    # A part of the helper's own, handed to its caller's one helper, would wait on itself.
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # 2 each: only being the helper keeps its part from running parts apart
    try:
        with torch.no_grad():
            inside = run_apart(lambda: may_run_apart(torch.zeros(1)), lambda: may_run_apart(torch.zeros(1)))
    finally:
        torch.set_num_threads(before)
    assert inside == (False, True)


def test_where_no_thread_can_start_both_parts_run_here_in_turn(two_threads, monkeypatch):
    from sigma_core.models import stage_threads

    class ShutDown:
        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(stage_threads, "_helper", lambda: ShutDown())
    with torch.no_grad():
        assert run_apart(threading.get_ident, threading.get_ident) == (threading.get_ident(),) * 2
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("first_step_fails", [False, True])
def test_a_result_handed_over_mid_way_reaches_the_waiting_part_and_a_failure_does_too(two_threads, first_step_fails):
    handed: Future = Future()

    def first_step():
        threading.Event().wait(0.1)  # the other part is waiting by then
        if first_step_fails:
            raise ValueError("first step failed")
        return 41

    def helper_part():
        return hand_over(first_step, handed) + 1

    def own_part():
        return handed.result(timeout=30) * 2  # would wait in vain (here: time out) if a failure were not handed over

    with torch.no_grad():
        if first_step_fails:
            with pytest.raises(ValueError, match="first step failed"):
                run_apart(helper_part, own_part)
            assert isinstance(handed.exception(), ValueError)
        else:
            assert run_apart(helper_part, own_part) == (42, 82)


def _small_model(dims):
    torch.manual_seed(0)
    return build_sigma(SigmaConfig(depths=(1, 1, 1, 1), dims=dims, num_classes=5, decoder_depths=(1, 1, 1))).eval()


def _counting_run_apart(monkeypatch):
    """A list that gets one entry per run_apart call of Sigma: 1 a forward that runs apart, 2 from 480x640 (the
    encoder too)."""
    calls = []
    real = sigma_module.run_apart
    monkeypatch.setattr(sigma_module, "run_apart", lambda *parts, **handed: calls.append(1) or real(*parts, **handed))
    return calls


@pytest.mark.parametrize("size, parts", [((180, 240), 1), ((480, 640), 2)])  # the smallest inputs for each
def test_the_published_weights_give_the_same_logits_with_the_stages_apart(two_threads, fixture, monkeypatch, size,
                                                                           parts):
    model = build_sigma(SigmaConfig(depths=(1, 1, 2, 1), dims=32, num_classes=9)).eval()
    load_weights(model, fixture["state_dict"])
    assert not model.stages_apart  # the published decoder's 4 blocks a stage: the caller's part would outweigh
    model.stages_apart = True  # the schedule is still exact there: check it on weights no one here trained
    torch.manual_seed(0)
    rgb, x = torch.randn(1, 3, *size), torch.randn(1, 3, *size)
    calls = _counting_run_apart(monkeypatch)
    with torch.inference_mode():
        apart = model(rgb, x)
        assert len(calls) == parts  # from 480x640 the encoder's modalities run apart too
        model.stages_apart = False
        together = model(rgb, x)
        assert len(calls) == parts
    torch.testing.assert_close(apart, together, atol=1e-5, rtol=0)


def test_the_stages_run_in_turn_below_180x240_at_other_thread_counts_wide_models_and_with_hooks(
        two_threads, monkeypatch):
    model = _small_model(32)
    calls = _counting_run_apart(monkeypatch)
    large, small = torch.randn(1, 3, 180, 240), torch.randn(1, 3, 176, 240)  # stage 0: 45x60, 44x60 positions
    with torch.inference_mode():
        model(small, small)
        assert calls == []
        torch.set_num_threads(3)  # measured at 2 threads only (see Sigma._apart_now)
        model(large, large)
        assert calls == []
        torch.set_num_threads(2)
        for hooked in (model.backbone.channel_attn_mamba[1].op.out_proj, model.decode_head.layers_up[1].blocks[0],
                       model.backbone, model.decode_head):  # hooks on the backbone and decoder themselves fire too
            seen = []
            hook = hooked.register_forward_hook(
                lambda module, args, out, seen=seen: seen.append(threading.current_thread().name))
            model(large, large)
            hook.remove()
            assert calls == [] and seen == [threading.current_thread().name]  # hooks see the stages in turn, here
        model(large, large)
        assert calls == [1]
    assert _small_model(64).stages_apart and not _small_model(96).stages_apart  # wide maps split well in each op
    assert not build_sigma(SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 2, 1))).stages_apart


def test_a_fusion_stage_failing_on_the_helper_fails_the_forward_with_its_error_not_a_hang(two_threads, monkeypatch):
    # Fusion stage 2 runs on the helper and is handed over mid-way: the caller's part waits for it.
    model = _small_model(32)
    calls = _counting_run_apart(monkeypatch)
    real = model.backbone.fuse

    def fuse(rgb_maps, x_maps, stage):
        if stage == 2:
            raise RuntimeError("fusion stage 2 failed")
        return real(rgb_maps, x_maps, stage)

    monkeypatch.setattr(model.backbone, "fuse", fuse)
    image = torch.randn(1, 3, 180, 240)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="fusion stage 2 failed"):
        model(image, image)
    assert calls == [1]


def test_a_helper_ending_without_handing_over_fails_the_waiting_part_instead_of_hanging(two_threads):
    def never_hands_over():
        return 1

    def fails_before_handing_over():
        raise ValueError("failed before the hand-over")

    for helper_part, error in ((never_hands_over, RuntimeError), (fails_before_handing_over, ValueError)):
        handed: Future = Future()
        with torch.no_grad(), pytest.raises(error):  # a TimeoutError here: the own part waited in vain
            run_apart(helper_part, lambda handed=handed: handed.result(timeout=30), handed=handed)
        assert handed.done() and torch.get_num_threads() == 2


class _HalvedDecoder(MambaDecoder):
    def forward(self, features):
        return super().forward(features) / 2


def test_a_replaced_or_patched_backbone_or_decoder_runs_in_turn_through_its_forward(two_threads, monkeypatch):
    # The parts call the backbone's and decoder's steps, not their forward: a forward of the user's must still run.
    image = torch.randn(1, 3, 180, 240)
    model = _small_model(32)
    with torch.inference_mode():
        reference = model(image, image)
    calls = _counting_run_apart(monkeypatch)
    halved = _HalvedDecoder(32, 5, depths=(1, 1, 1))
    halved.load_state_dict(model.decode_head.state_dict())
    model.decode_head = halved.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(image, image), reference / 2, atol=1e-5, rtol=0)
    model.decode_head = MambaDecoder(32, 5, depths=(1, 1, 1)).eval()
    model.decode_head.load_state_dict(halved.state_dict())
    backbone_forward = model.backbone.forward
    model.backbone.forward = lambda rgb, x: backbone_forward(x, rgb)  # the modalities swapped
    with torch.inference_mode():
        swapped = model(image, torch.zeros_like(image))
        del model.backbone.forward
        torch.testing.assert_close(swapped, model(torch.zeros_like(image), image), atol=1e-5, rtol=0)
    assert calls == [1]  # only the last forward, with the modules as built, ran apart


def test_an_export_with_symbolic_sizes_takes_every_size_at_two_threads(two_threads):
    # Deciding by the input size first would record the comparison as a guard: the exported program then refused
    # inputs on the other side of it.
    model = _small_model(32)
    model.set_scan_backend("onnx")  # the export's scan (see sigma_core.export)
    sizes = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with torch.no_grad():
        program = torch.export.export(model, (torch.zeros(1, 3, 64, 96),) * 2,
                                      dynamic_shapes={"rgb": sizes, "x": dict(sizes)})
    model.set_scan_backend("auto")
    for size in ((176, 240), (180, 240)):
        image = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(image, image), model(image, image), atol=1e-5, rtol=0)


def test_training_runs_the_stages_in_order_on_the_callers_thread(two_threads, monkeypatch):
    model = _small_model(32).train()
    monkeypatch.setattr(sigma_module, "run_apart",
                        lambda *parts, **handed: pytest.fail("ran apart with a gradient wanted"))
    model(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)).sum().backward()
    assert model.backbone.cross_mamba[0].op.in_proj.weight.grad is not None


def test_a_forked_child_runs_the_parts_apart_on_a_helper_of_its_own():
    # The parent's helper thread does not exist in a forked child: a task handed to its executor would never run.
    assert_forked_child_runs(
        """
        import torch
        from sigma_core.models.stage_threads import run_apart
        torch.set_num_threads(2)
        with torch.no_grad():
            run_apart(lambda: 1, lambda: 2)  # the parent's helper thread now exists
        """,
        """
        with torch.no_grad():
            assert run_apart(lambda: 1, lambda: 2) == (1, 2)
        """,
        wait_s=30)
