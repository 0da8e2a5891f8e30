"""The HTTP layer, one job per module.

Routes, which only dispatch: `native` (TGI's and ours), `openai`, `admin`. Request bodies per
protocol: `tgi_protocol`, `openai_protocol`, `responses_protocol`, derived from the vocabulary by
`vocabulary`. Answers: `native`'s renderers, `completion_render` and `chat_render` (over
`openai_render`), `responses_render` (the `responses_objects` it sends), `choices` for OpenAI's
`n`; `streaming` writes SSE. `errors` holds the error bodies and their
handlers, `openapi_schema` writes this server's caps into `/openapi.json`, `deps` the FastAPI
dependencies. The routes reach the engine only through the service and `server.bridge`.
"""
