-- wrk script: an agent's next step, every request — the conversation of benchmarks/http/agent-request.json (~55 KB)
-- with a last user message no request had before (its first words number the step), as an agent sends its whole
-- history plus what is new. Run from the repository's root.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("benchmarks/http/agent-request.json", "rb"))
local body = f:read("*a")
f:close()
local at = assert(body:find("Now fix the failing test.", 1, true))
local head, tail = body:sub(1, at - 1), body:sub(at)
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local step = 0
function request()
  step = step + 1
  return wrk.format(nil, nil, nil, head .. "Step " .. tostring(tid) .. "." .. step .. ": " .. tail)
end
