"""The interactive API docs: a small HTML page that loads Swagger UI from a CDN and points it at the document.

Nothing is vendored: the page needs the browser to reach cdn.jsdelivr.net. Without JavaScript, or when the CDN
cannot be reached, the page still says where the OpenAPI document is.
"""

from __future__ import annotations

import html
import json

# Swagger UI 5 renders OpenAPI 3.1. The major version is pinned; jsDelivr serves its latest release.
SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"


def _script_string(value: str) -> str:
    """A JavaScript string literal that is safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def docs_html(openapi_url: str = "/openapi.json", *, title: str = "GreenMesh API") -> str:
    """The docs page for the OpenAPI document served at `openapi_url`."""
    url = html.escape(openapi_url, quote=True)
    page_title = html.escape(title)
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{page_title}</title>
  <link rel="stylesheet" href="{SWAGGER_UI}/swagger-ui.css" crossorigin="anonymous">
</head>
<body>
  <noscript>
    <p>The interactive documentation needs JavaScript. The API is described by the OpenAPI document at
    <a href="{url}">{url}</a>.</p>
  </noscript>
  <div id="swagger-ui">
    <p id="docs-status"><span>Loading the interactive documentation&hellip;</span>
    The OpenAPI document is at <a href="{url}">{url}</a>.</p>
  </div>
  <script src="{SWAGGER_UI}/swagger-ui-bundle.js" crossorigin="anonymous"></script>
  <script>
    window.addEventListener("load", function () {{
      if (typeof SwaggerUIBundle === "undefined") {{
        document.querySelector("#docs-status span").textContent = "Swagger UI could not be loaded from its CDN.";
        return;
      }}
      window.ui = SwaggerUIBundle({{
        url: {_script_string(openapi_url)},
        dom_id: "#swagger-ui",
        deepLinking: true,
        displayOperationId: true,
        tryItOutEnabled: false,
      }});
    }});
  </script>
</body>
</html>
"""
