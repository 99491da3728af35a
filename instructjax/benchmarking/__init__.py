"""Benchmarks of the stages' compiled steps: FLOP counts, device peaks, timing, checks, tables.

    python experiments/benchmark.py --preset=tiny --mesh=data=-1 --rules=dp --batch=32 --seq=128 \
        --output=/tmp/bench

See instructjax/benchmarking/flops.py for what "model FLOPs" and the decode roofline count,
hardware.py for where a device's peak comes from (a table for accelerators, a measured matmul
on CPUs), suite.py for what each benchmark runs.
"""
from instructjax.benchmarking import checks, flops, hardware, report, timing
from instructjax.benchmarking.hardware import DevicePeak, device_peak, host_info
from instructjax.benchmarking.timing import Timing, compile_seconds, time_calls, time_stateful

__all__ = ["DevicePeak", "Timing", "checks", "compile_seconds", "device_peak", "flops",
           "hardware", "host_info", "report", "time_calls", "time_stateful", "timing"]
