"""Workers: build with WorkerBuilder, run with ``await worker.run()``."""
