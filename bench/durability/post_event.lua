-- wrk script for bench/durability.sh: POST the same unsigned JSON event.
--
-- Usage: wrk ... -s bench/durability/post_event.lua URL -- BODY_FILE
--
-- The source uses `verify: { scheme: none }` and no dedupe, so every request is
-- a new event. No response() callback (it would make wrk parse every response
-- in Lua): the gateway answers this path 202 or an error, so accepted =
-- requests - non-2xx (errors.status), and the script checks that is 0.
-- done() prints one parseable line starting with "DUR_RESULT" (latencies and
-- duration in microseconds).

function init(args)
   local path = args[1]
   if not path then
      error("post_event.lua needs: -- BODY_FILE")
   end
   local f = assert(io.open(path, "rb"))
   local body = f:read("*a")
   f:close()

   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "DUR_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d "
         .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
