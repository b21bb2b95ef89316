"""The HTTP API end to end: real Ray Serve, real SeaweedFS, tiny real-architecture models."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from tests.conftest import tiny_app_args
from tests.s3server import s3_down

pytestmark = pytest.mark.serve


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None, **kw: object) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr, mode).save(buf, fmt, **kw)
    return buf.getvalue()


def noise(h: int, w: int, c: int = 3, seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    arr = rng.integers(0, top + 1, (h, w, c), dtype=dtype)
    return arr[:, :, 0] if c == 1 else arr


def fetch(url: str) -> PILImage.Image:
    got = httpx.get(url)  # no credentials: the presigned URL is the only key
    assert got.status_code == 200, got.text
    return PILImage.open(io.BytesIO(got.content))


def upscale(client: httpx.Client, data: bytes, **params: object) -> httpx.Response:
    return client.post("/v1/upscale", params=params, files={"file": ("in", data, "image/x")})


def decoded_result(client: httpx.Client, data: bytes, **params: object) -> np.ndarray:
    r = upscale(client, data, **params)
    assert r.status_code == 200, r.text
    return np.asarray(fetch(r.json()["url"])).astype(np.int16)


KINDS = [
    ("png-rgb", lambda: encode(noise(20, 28)), "PNG", "RGB"),
    ("jpeg", lambda: encode(noise(20, 28), "JPEG", quality=90), "JPEG", "RGB"),
    ("webp", lambda: encode(noise(20, 28), "WEBP", quality=90), "WEBP", "RGB"),
    ("png-rgba", lambda: encode(noise(20, 28, 4)), "PNG", "RGBA"),
    ("png-gray", lambda: encode(noise(20, 28, 1)), "PNG", "L"),
    ("png-gray16", lambda: encode(noise(20, 28, 1, dtype=np.uint16)), "PNG", "I;16"),
]


@pytest.mark.parametrize(("kind", "make", "fmt", "mode"), KINDS, ids=[k[0] for k in KINDS])
def test_every_image_kind_comes_back_as_the_same_kind(serve_app, kind, make, fmt, mode) -> None:
    with serve_app.client() as client:
        r = upscale(client, make())
        assert r.status_code == 200, r.text
        body = r.json()
    assert (body["width"], body["height"], body["model"], body["scale"]) == (112, 80, "tiny-x4", 4)
    assert body["bytes"] > 0 and body["expires_at"] and body["id"].startswith("results/")
    img = fetch(body["url"])
    assert img.size == (112, 80)
    assert img.format == fmt
    assert img.mode in {mode, "I;16B" if mode == "I;16" else mode, "I" if mode == "I;16" else mode}


def test_raw_body_and_output_format_options(serve_app) -> None:
    with serve_app.client() as client:
        r = client.post(
            "/v1/upscale",
            params={"format": "jpeg", "quality": 80, "scale": 2},
            content=encode(noise(16, 16)),
            headers={"content-type": "application/octet-stream"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["format"], body["width"], body["scale"]) == ("jpeg", 32, 2)
    assert fetch(body["url"]).format == "JPEG"


def test_presigned_url_is_the_only_way_in(serve_app) -> None:
    with serve_app.client() as client:
        url = upscale(client, encode(noise(8, 8))).json()["url"]
    sig_at = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    tampered = url[:sig_at] + ("0" if url[sig_at] != "0" else "1") + url[sig_at + 1 :]
    assert httpx.get(tampered).status_code == 403
    assert httpx.get(url.split("?")[0]).status_code == 403  # anonymous, unsigned
    assert httpx.get(url).status_code == 200


def test_concurrent_requests_get_their_own_pixels_and_share_batches(serve_app) -> None:
    # 150x130 images with 64-px tiles: several tiles each, batched with other requests' tiles.
    images = [encode(noise(130, 150, seed=s)) for s in range(6)]
    with serve_app.client() as client:
        alone = [decoded_result(client, data) for data in images]
        before = client.get("/v1/stats").json()["upscaler"]
        with ThreadPoolExecutor(len(images)) as pool:
            together = list(pool.map(lambda d: decoded_result(client, d), images))
        after = client.get("/v1/stats").json()["upscaler"]
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert a.shape == b.shape == (520, 600, 3)
        assert np.abs(a - b).max() <= 1, f"request {i} differs from its single-request result"
        others = [np.abs(b - x).mean() for j, x in enumerate(alone) if j != i]
        assert min(others) > 10, f"request {i} looks like another request's image"
    assert after["forward_passes"] > before["forward_passes"]
    batched = after["tiles"] - before["tiles"]
    forwards = after["forward_passes"] - before["forward_passes"]
    assert batched / forwards > 1.5, f"tiles did not share forward passes: {after}"


BAD_INPUTS = [
    ("empty", b"", {}, 400, "empty_input"),
    ("text", b"hello, this is not an image at all", {}, 415, "unsupported_media_type"),
    ("truncated", encode(noise(64, 64))[:200], {}, 400, "corrupt_image"),
    ("too-many-pixels", encode(np.zeros((1100, 1000, 3), np.uint8)), {}, 413, "too_large"),
    ("output-too-large", encode(np.zeros((900, 900, 3), np.uint8)), {"scale": 8}, 413, "too_large"),
    ("scale-range", encode(noise(8, 8)), {"scale": 9}, 422, "validation_error"),
    ("scale-type", encode(noise(8, 8)), {"scale": "big"}, 422, "validation_error"),
    ("format", encode(noise(8, 8)), {"format": "tiff"}, 422, "validation_error"),
    ("unknown-model", encode(noise(8, 8)), {"model": "nope"}, 400, "unknown_model"),
    ("denoise-other", encode(noise(8, 8)), {"denoise": 0.5}, 400, "invalid_option"),
    ("jpeg-alpha", encode(noise(8, 8, 4)), {"format": "jpeg"}, 400, "invalid_option"),
    (
        "weights-missing",
        encode(noise(8, 8)),
        {"model": "realesr-general-x4v3"},
        503,
        "model_unavailable",
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "params", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_json_error(serve_app, name, data, params, status, code) -> None:
    with serve_app.client() as client:
        r = upscale(client, data, **params)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and error["message"]
        if status == 503:
            assert r.headers["retry-after"]
        assert upscale(client, encode(noise(8, 8))).status_code == 200  # still serving


def test_animated_image_is_refused(serve_app) -> None:
    frames = [PILImage.fromarray(noise(8, 8, seed=s)) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    with serve_app.client() as client:
        r = upscale(client, buf.getvalue())
    assert (r.status_code, r.json()["error"]["code"]) == (415, "animated_image")


def test_oversized_upload_is_refused_while_streaming(serve_app) -> None:
    def body():  # chunked: no Content-Length to trust, the ingress must count
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(100):
            yield b"\0" * 65536

    with serve_app.client() as client:
        r = client.post("/v1/upscale", content=body())
        assert (r.status_code, r.json()["error"]["code"]) == (413, "too_large")
        r = client.post("/v1/upscale", content=b"x" * 4_000_000)  # declared too large
        assert r.status_code == 413


def test_storage_down_gives_503_then_recovers(serve_app) -> None:
    data = encode(noise(8, 8))
    with serve_app.client() as client:
        with s3_down(serve_app.s3):
            r = upscale(client, data)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "storage_unavailable"
            assert int(r.headers["retry-after"]) > 0
            ready = client.get("/readyz")
            assert ready.status_code == 503 and not ready.json()["checks"]["storage"]["ready"]
        assert upscale(client, data).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_health_models_and_docs(serve_app) -> None:
    with serve_app.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["checks"]["default_model"]["ready"]
        models = {m["name"]: m for m in client.get("/v1/models").json()}
        assert models["tiny-x4"]["ready"] and models["tiny-x4"]["scale"] == 4
        assert models["tiny-x4"]["status"] == "loaded"
        assert "path" in models["tiny-x4"]["weights_source"]
        assert models["realesrgan-x4plus"]["kind"] == "upscale"
        assert "/v1/upscale" in client.get("/openapi.json").json()["paths"]
        r = client.get("/v1/nothing-here")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


def test_real_x4plus_through_http(serve_app) -> None:
    """The real Real-ESRGAN x4plus (converted from the ncnn wheel) behind the whole HTTP path."""
    from skimage import data as skdata

    crop = skdata.astronaut()[40:64, 180:212]  # a 32x24 patch with an edge and skin
    with serve_app.client(timeout=600) as client:
        r = upscale(client, encode(crop), model="realesrgan-x4plus")
        assert r.status_code == 200, r.text
        out = np.asarray(fetch(r.json()["url"])).astype(np.float32)
        models = {m["name"]: m for m in client.get("/v1/models").json()}
    assert out.shape == (96, 128, 3)
    assert "offline" in models["realesrgan-x4plus"]["weights_source"]
    # A real super-resolution of the patch: close to a plain resize overall, not noise.
    ref = np.asarray(PILImage.fromarray(crop).resize((128, 96), PILImage.BICUBIC), np.float32)
    assert np.abs(out - ref).mean() < 12


def test_another_ray_driver_calls_the_app_through_a_handle(serve_app) -> None:
    script = textwrap.dedent(
        f"""
        import io, numpy as np, ray
        from PIL import Image
        from ray import serve
        ray.init(address={serve_app.ray_address!r}, namespace="other-app", log_to_driver=False)
        buf = io.BytesIO(); Image.fromarray(np.full((10, 12, 3), 90, np.uint8)).save(buf, "PNG")
        handle = serve.get_app_handle("superres")
        result = handle.upscale.remote(buf.getvalue(), scale=2, format="webp").result()
        print("RESULT", result.width, result.height, result.format, result.url)
        try:
            handle.upscale.remote(b"not an image").result()
        except Exception as e:
            print("ERROR", type(e).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line}
    assert done.returncode == 0 and "RESULT" in lines, done.stdout + done.stderr
    width, height, fmt, url = lines["RESULT"]
    assert (width, height, fmt) == ("24", "20", "webp")
    assert fetch(url).size == (24, 20)
    assert lines["ERROR"]  # a domain error crosses the handle as an exception


CROSS_ROUTE = [
    ("/v1/upscale", {"max_faces": 3}, "max_faces"),
    ("/v1/upscale", {"background_model": "none"}, "background_model"),
    ("/v1/face-enhance", {"denoise": 0.5}, "denoise"),
    ("/v1/face-enhance", {"model": "tiny-x4"}, "model"),
    ("/v1/upscale", {"sclae": 2}, "sclae"),
]


@pytest.mark.parametrize(("route", "params", "name"), CROSS_ROUTE)
def test_each_route_refuses_parameters_not_its_own(serve_app, route, params, name) -> None:
    with serve_app.client() as client:
        r = client.post(route, params=params, content=encode(noise(8, 8)))
        assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error"), r.text
        assert name in r.json()["error"]["message"]
        # the same as a form field
        form = {k: str(v) for k, v in params.items()}
        r = client.post(route, data=form, files={"file": ("in", encode(noise(8, 8)))})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_error"), r.text
        assert name in r.json()["error"]["message"]


def test_options_as_form_fields(serve_app) -> None:
    with serve_app.client() as client:
        r = client.post(
            "/v1/upscale",
            data={"scale": "2", "format": "webp"},
            files={"file": ("in", encode(noise(8, 8)))},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["format"]) == (16, "webp")
        r = client.post(
            "/v1/upscale",
            params={"scale": 2},
            data={"scale": "3"},
            files={"file": ("in", encode(noise(8, 8)))},
        )
        assert r.status_code == 422 and "scale" in r.json()["error"]["message"]


def test_openapi_shows_each_routes_own_options_and_the_upload(serve_app) -> None:
    from superres_client.options import FaceEnhanceOptions, UpscaleOptions

    with serve_app.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    for route, options in (
        ("/v1/upscale", UpscaleOptions),
        ("/v1/face-enhance", FaceEnhanceOptions),
    ):
        operation = paths[route]["post"]
        assert {p["name"] for p in operation["parameters"]} == set(options.model_fields)
        content = operation["requestBody"]["content"]
        assert content["multipart/form-data"]["schema"]["required"] == ["file"]
        assert set(content["multipart/form-data"]["schema"]["properties"]) == {
            "file",
            *options.model_fields,
        }
        assert content["application/octet-stream"]["schema"]["format"] == "binary"
    scale = next(p for p in paths["/v1/upscale"]["post"]["parameters"] if p["name"] == "scale")
    assert scale["schema"]["anyOf"][0] == {"type": "number", "minimum": 1.0, "maximum": 8.0}


MALFORMED_MULTIPART = [
    ("no-boundary", {"content-type": "multipart/form-data"}, b"--x\r\n"),
    (
        "two-files",
        {"content-type": "multipart/form-data; boundary=B"},
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nA\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="b"\r\n\r\nB\r\n--B--\r\n',
    ),
    (
        "too-many-fields",
        {"content-type": "multipart/form-data; boundary=B"},
        b"".join(
            f'--B\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n1\r\n'.encode()
            for i in range(30)
        )
        + b"--B--\r\n",
    ),
    ("no-file", {"content-type": "multipart/form-data; boundary=B"}, b"--B--\r\n"),
]


@pytest.mark.parametrize(
    ("name", "headers", "body"), MALFORMED_MULTIPART, ids=[m[0] for m in MALFORMED_MULTIPART]
)
def test_malformed_multipart_is_a_400(serve_app, name, headers, body) -> None:
    with serve_app.client() as client:
        r = client.post("/v1/upscale", headers=headers, content=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] in ("malformed_multipart", "missing_file")


def test_405_names_the_allowed_methods(serve_app) -> None:
    with serve_app.client() as client:
        r = client.get("/v1/upscale")
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_errors_carry_no_endpoints_or_bucket_names(serve_app) -> None:
    data = encode(noise(8, 8))
    settings = serve_app.settings
    secrets = [settings.s3_endpoint_url, settings.s3_bucket, str(settings.weights_dir), "http"]
    with serve_app.client() as client:
        with s3_down(serve_app.s3):
            bodies = [upscale(client, data).text, client.get("/readyz").text]
        bodies.append(upscale(client, data, model="realesr-general-x4v3").text)
        bodies.append(client.get("/v1/models").text)
    for body in bodies:
        assert "unavailable" in body
        for secret in secrets:
            assert secret
            assert secret not in body


def test_the_upscaler_runs_as_many_torch_threads_as_it_has_cpus(serve_app) -> None:
    from tests.conftest import UPSCALER_CPUS

    with serve_app.client() as client:
        stats = client.get("/v1/stats").json()["upscaler"]
    assert (stats["device"], stats["torch_threads"]) == ("cpu", UPSCALER_CPUS)
    assert stats["memory_budget_mb"] > 0


def test_a_compiled_upscaler_serves_the_same_pixels(serve_app, tiny_weights) -> None:
    from ray import serve

    from serve_app.app import build

    args = tiny_app_args(
        tiny_weights,
        jobs=False,  # one JobRunner per bucket: the session app's
        compile="on",
        backend="torch",
    )
    config = {"tile": 32, "max_batch_size": 2, "batch_wait_timeout_s": 0.01}
    serve.run(
        build(args, serve_app.settings, {"Upscaler": {"user_config": config}}),
        name="compiled-test",
        route_prefix="/compiled-test",
    )
    try:
        image = encode(noise(40, 56, seed=3))
        with serve_app.client() as client:
            stats = client.get("/compiled-test/v1/stats").json()["upscaler"]
            assert stats["compiled"] == ["tiny-x4"]
            eager = np.asarray(fetch(upscale(client, image).json()["url"]))  # the session's app
            r = client.post("/compiled-test/v1/upscale", files={"file": ("in", image)})
            assert r.status_code == 200, r.text
            compiled = np.asarray(fetch(r.json()["url"]))
        assert compiled.shape == eager.shape == (160, 224, 3)
        # other tiles (32 vs 64 px) and compiled kernels: seams and rounding differ a little
        assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 2
    finally:
        serve.delete("compiled-test")


def test_a_large_upload_travels_by_reference_and_the_worker_stores_the_result(serve_app) -> None:
    from deployments.payload import INLINE_MAX_BYTES

    data = encode(noise(800, 1000, seed=4))  # random pixels do not compress: ~2.4 MB
    assert INLINE_MAX_BYTES < len(data) < 3_000_000
    with serve_app.client(timeout=300) as client:
        r = upscale(client, data, scale=1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (1000, 800)
    assert "store_s" in body["timings"]  # stored by the Upscaler, not the Ingress
    got = np.asarray(fetch(body["url"]))
    assert got.shape == (800, 1000, 3)
