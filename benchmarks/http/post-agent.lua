-- wrk script: POST a coding agent's step (benchmarks/http/agent-request.json, ~55 KB: a system prompt, 16 tools, ten
-- tool-calling turns), the same body every time — a client resending one step. Run from the repository's root.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("benchmarks/http/agent-request.json", "rb"))
wrk.body = f:read("*a")
f:close()
