-- wrk script for bench/e2e.sh: POST a GitHub-signed push event.
--
-- Usage: wrk ... -s bench/e2e/signed_post.lua URL -- BODY_FILE SIGNATURE
--   BODY_FILE  file holding the exact body bytes to send
--   SIGNATURE  value of X-Hub-Signature-256 ("sha256=<hex>") for that body
--
-- GitHub signatures carry no timestamp, so one precomputed signature stays
-- valid for the whole run and the request is built once per thread. No
-- X-GitHub-Delivery header is sent: a fixed id could trip de-duplication.
-- done() prints one parseable line starting with "E2E_RESULT" (latencies in
-- microseconds, duration in microseconds).

function init(args)
   local path, sig = args[1], args[2]
   if not path or not sig then
      error("signed_post.lua needs: -- BODY_FILE SIGNATURE")
   end
   local f = assert(io.open(path, "rb"))
   local body = f:read("*a")
   f:close()

   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
   wrk.headers["X-GitHub-Event"] = "push"
   wrk.headers["X-Hub-Signature-256"] = sig
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "E2E_RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d "
         .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
