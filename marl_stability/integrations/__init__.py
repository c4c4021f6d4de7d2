"""Integrations with other training libraries: this project's instrumentation, detectors and run folders attached to
runs that our trainer does not drive (``benchmarl``: a BenchMARL ``Callback``). Each integration is an optional
extra; importing its module without the extra installed raises an ImportError that names the extra."""
