-- wrk script: POST one small chat completion, non-streamed.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello from the load test"}],"max_tokens":16}'
