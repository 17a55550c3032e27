-- wrk script: an MCP JSON-RPC tools/call POST, and a machine-readable summary.
--
-- BENCH_AUTH (environment) is the whole Authorization header value: the
-- upstream's credential for the direct run, the gateway key (ig_...) for
-- igris-mw, anything for the bare proxy (it drops it).
--
-- request() counts what each thread sent, so that done() can tell the
-- requests still in flight when wrk stopped (sent - completed) from the
-- completed ones: the audit check needs both bounds.

wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        .. '"params":{"name":"echo","arguments":{"text":"hello"}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-06-18"
local auth = os.getenv("BENCH_AUTH")
if auth then
   wrk.headers["Authorization"] = auth
end

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local cached

function init(args)
   sent = 0
   cached = wrk.format()
end

function request()
   sent = sent + 1
   return cached
end

function done(summary, latency, requests)
   local total_sent = 0
   for _, thread in ipairs(threads) do
      total_sent = total_sent + thread:get("sent")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH {"sent":%d,"completed":%d,"duration_us":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
      .. '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"max_us":%.1f}\n',
      total_sent, summary.requests, summary.duration, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max))
end
