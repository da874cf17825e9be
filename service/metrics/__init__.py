"""Every Prometheus metric aeguard defines, in one package, each on an explicit registry.

- :mod:`.serving`: the series of one serving process (RPCs, scores, models, drift windows);
- :mod:`.scrape`: what ``/metrics`` shows (drift PSI computed at scrape time) and its HTTP server;
- :mod:`.supervisor`: the supervising parent's own series (``--processes N``);
- :mod:`.batch`: a batch job's series, pushed to a Pushgateway;
- :mod:`.watch`: `aeguard watch`'s scores per watched group and its own health.

Names follow Prometheus conventions: ``aeguard_`` prefix, base units, histograms, labels
``model_name``/``model_version``, no unbounded labels.
"""

from service.metrics.batch import batch_job_registry
from service.metrics.scrape import ScrapeView, scrape_registry, serve_http
from service.metrics.serving import (
    BATCH_SIZE_BUCKETS,
    MODEL_LABELS,
    MULTIPROC_ENV,
    NORMALIZED_SCORE_BUCKETS,
    REFERENCE_SERIES,
    RETIRED,
    RPC_DURATION_BUCKETS,
    WINDOW_SERIES,
    Metrics,
    RpcSeries,
    observe_many,
)
from service.metrics.supervisor import SupervisorMetrics

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "MODEL_LABELS",
    "MULTIPROC_ENV",
    "NORMALIZED_SCORE_BUCKETS",
    "REFERENCE_SERIES",
    "RETIRED",
    "RPC_DURATION_BUCKETS",
    "WINDOW_SERIES",
    "Metrics",
    "RpcSeries",
    "ScrapeView",
    "SupervisorMetrics",
    "batch_job_registry",
    "observe_many",
    "scrape_registry",
    "serve_http",
]
