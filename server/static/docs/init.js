"use strict";
// Swagger UI over /openapi.json. A file, not an inline script, so the page's CSP needs no
// 'unsafe-inline' for scripts. "Authorize" takes the bearer token once for every operation.
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    displayRequestDuration: true,
    // No badge from an outside validator: the page talks to this server only.
    validatorUrl: null,
  });
});
