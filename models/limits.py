"""What one request may send and ask for: the only limits object, checked before the work it bounds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from models.errors import ImageTooLargeError


class Limits(BaseModel):
    """Per-request limits. ``max_output_pixels`` bounds every canvas a request allocates: the
    network's own output (a 4x network computes at 4x even when ``scale=1`` is asked for) and the
    requested result. The canvas is float32 in host memory: 128 MP is 1.5 GB for RGB (12 B/px).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_bytes: int = Field(default=50_000_000, gt=0, strict=True)
    max_input_pixels: int = Field(default=50_000_000, gt=0, strict=True)
    max_face_input_pixels: int = Field(default=25_000_000, gt=0, strict=True)
    max_output_pixels: int = Field(default=128_000_000, gt=0, strict=True)
    # An upload that has not fully arrived by then (a client trickling bytes) is refused.
    upload_timeout_s: float = Field(default=60.0, gt=0, le=3600)

    def peak_request_bytes(self, *, face: bool = False, canvas_on_device: bool = False) -> int:
        """Host memory one request may hold at these limits, at its peak (worst case: 16-bit RGBA,
        a result as large as the canvas). Per pixel of each size, in bytes:

        * upload: the bytes in the request and in the replica (2 x ``max_upload_bytes``);
        * input (``max_input_pixels``): decoded 16-bit RGBA (8), widened to int32 (16), and, when
          the canvas is on the host, the float planes the tiles are cut from (16);
        * canvas (``max_output_pixels``, the network's output): the host copy of the quantised
          result (12), and, on the host, colour and alpha canvases, float32 3-channel each (24)
          plus the float and int32 copies quantising makes (24);
        * result (``max_output_pixels``): resized 16-bit RGBA (8), encoding's sample, filter and
          zlib buffers (24).
        """
        pixels = self.max_face_input_pixels if face else self.max_input_pixels
        host_planes = 0 if canvas_on_device else 16
        host_canvas = 0 if canvas_on_device else 24 + 24
        upload = 2 * self.max_upload_bytes
        return (
            upload
            + pixels * (8 + 16 + host_planes)
            + self.max_output_pixels * (12 + host_canvas + 8 + 24)
        )

    def check_bytes(self, size: int) -> None:
        if size > self.max_upload_bytes:
            raise ImageTooLargeError(
                f"the image is {size} bytes, over the limit of {self.max_upload_bytes}",
                limit=self.max_upload_bytes,
                actual=size,
            )

    def check_input(self, width: int, height: int, *, face: bool = False) -> None:
        limit = self.max_face_input_pixels if face else self.max_input_pixels
        pixels = width * height
        if pixels > limit:
            raise ImageTooLargeError(
                f"the image is {width}x{height} = {pixels} pixels, over the limit of {limit}",
                limit=limit,
                actual=pixels,
            )

    def check_output(self, width: int, height: int, *, what: str = "the output") -> None:
        pixels = width * height
        if pixels > self.max_output_pixels:
            raise ImageTooLargeError(
                f"{what} would be {width}x{height} = {pixels} pixels, over the limit of "
                f"{self.max_output_pixels}",
                limit=self.max_output_pixels,
                actual=pixels,
            )
