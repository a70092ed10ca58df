"""Jobs: long videos and image archives analysed in the background (POST /jobs).

The queue engine is huey (``app.jobs.queue``): ``SqliteHuey`` in ``MICROFACS_JOBS_DIR`` by default (embedded:
worker threads in the API process, nothing else to run) or ``RedisHuey`` with ``MICROFACS_JOBS_URL=redis://...``
(distributed: ``microfacs-worker`` processes). The same code runs a job in both (``app.jobs.runner``); the job's
state, upload and result are files under ``MICROFACS_JOBS_DIR`` (``app.jobs.store``), so the API reads them
whichever worker ran the job.
"""
