-- benches/compare/run.sh: wrk's summary as one JSON line in $WRK_JSON.
-- Latency percentiles in microseconds; errors are wrk's socket errors
-- (connect, read, write, timeout) plus responses with status >= 400.
function done(summary, latency, requests)
    local e = summary.errors
    local f = assert(io.open(os.getenv("WRK_JSON"), "w"))
    f:write(string.format(
        '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,'
            .. '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,'
            .. '"p50_us":%d,"p99_us":%d}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect + e.read + e.write + e.status + e.timeout,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99)))
    f:close()
end
