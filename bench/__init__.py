"""The MeshHook benchmark (issue 7, DESIGN §8): resume latency and throughput, pickup latency
and worker throughput, measured next to a raw-SQL floor. Run `python -m bench [--quick]`."""
