"""Development tools: the local S3 server, ``make run``'s launcher, the ncnn reference runtime.

Used by the tests, the benches and ``make run``; never installed into the service distribution
(``[tool.setuptools.packages.find]`` includes serve_app, deployments and models only).
"""
