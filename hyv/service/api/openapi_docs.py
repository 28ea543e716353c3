"""OpenAPI text for what FastAPI cannot infer: the two encodings of POST /v1/videos, and the
document-level description."""

from __future__ import annotations

from typing import Any

DESCRIPTION = """
Text-to-video and image-to-video generation, shaped after OpenAI's Videos API so its official
SDK works unchanged: `OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY).videos.create(...)`.

Beyond it: `Idempotency-Key` on submissions, `Range` requests on finished videos, watching a
video while it renders (GET .../content streams the MP4 as it is produced), progress as
Server-Sent Events (GET .../events), and our own generation fields (num_frames, fps, steps,
guidance, seed, negative_prompt, webhook_url).

Errors always look like `{"error": {"code", "message", "param", "type"}}`. Authenticate with
`Authorization: Bearer <key>` when the server has keys configured.
"""

_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {
            "type": "string",
            "description": "What the video shows; only words of the model's vocabulary (GET /v1/models) "
            "for a model with the built-in text encoder.",
        },
        "model": {"type": "string"},
        "seconds": {
            "type": "string",
            "description": "Clip length in seconds, e.g. '2' or OpenAI's '4', '8', '12': the model's "
            "length of the nearest duration.",
        },
        "size": {
            "type": "string",
            "description": "'WIDTHxHEIGHT'; a model with fixed sizes renders the one of the nearest "
            "aspect ratio.",
            "example": "64x64",
        },
        "input_reference": {"type": "string", "format": "binary", "description": "Image (PNG/JPEG) for I2V."},
        "negative_prompt": {"type": "string"},
        "num_frames": {
            "type": "integer",
            "description": "4n+1 (one of the model's frame_counts); wins over seconds.",
        },
        "fps": {"type": "integer"},
        "steps": {"type": "integer"},
        "guidance": {"type": "number"},
        "seed": {"type": "integer"},
        "webhook_url": {"type": "string", "format": "uri"},
    },
}

CREATE_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": _MULTIPART_SCHEMA,
            "example": {"prompt": "a red circle moving left on a black background", "size": "64x64"},
        },
        "application/json": {
            "schema": {"$ref": "#/components/schemas/VideoCreate"},
            "examples": {
                "text_to_video": {
                    "summary": "Text to video",
                    "value": {
                        "prompt": "a red circle moving left on a black background",
                        "size": "64x64",
                        "num_frames": 17,
                        "seed": 42,
                    },
                },
                "image_to_video": {
                    "summary": "Image to video (base64 data URL)",
                    "value": {
                        "prompt": "a red circle moving right on a black background",
                        "input_reference": "data:image/png;base64,iVBORw0KGgo...",
                        "seconds": "2",
                    },
                },
            },
        },
    },
}
