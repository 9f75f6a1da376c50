"""What the PyTorch comparison scripts share: the mean time of a CUDA function."""
import torch


def timed(fn, iters=10):
    """Seconds per call of fn() on the GPU, from CUDA events around `iters` calls after one warm-up."""
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters / 1e3
