"""A Python client of the superres service (sync and asyncio, on httpx) and the ``superres`` CLI.

```python
from superres_client import Client
with Client("http://127.0.0.1:8000", api_key=None) as sr:
    result = sr.upscale("photo.jpg", scale=2, format="webp")
    result.save("photo@2x.webp")
    job = sr.submit("big.png", scale=4)
    job.wait(progress=lambda done, total: print(f"{done}/{total} tiles"))
```
"""

from superres_client._common import Retry, __version__
from superres_client.aio import AsyncClient, AsyncJob
from superres_client.client import Client, Job
from superres_client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidOptions,
    JobCancelled,
    JobFailed,
    NotFound,
    Overloaded,
    QuotaExceeded,
    ServerError,
    SuperresError,
    Timeout,
    Unauthorized,
)
from superres_client.options import FaceEnhanceOptions, UpscaleOptions
from superres_client.results import JobView, Progress, Result

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "BadRequest",
    "Client",
    "Conflict",
    "FaceEnhanceOptions",
    "Forbidden",
    "InvalidOptions",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobView",
    "NotFound",
    "Overloaded",
    "Progress",
    "QuotaExceeded",
    "Result",
    "Retry",
    "ServerError",
    "SuperresError",
    "Timeout",
    "Unauthorized",
    "UpscaleOptions",
    "__version__",
]
