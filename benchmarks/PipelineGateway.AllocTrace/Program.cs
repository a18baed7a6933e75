using Microsoft.Diagnostics.Tracing.Etlx;
using Microsoft.Diagnostics.Tracing.Parsers.Clr;

// Where a process's allocations come from, from a trace of the runtime's sampled allocation events (one event about
// every 100 KB allocated, with the type and the allocating stack): benchmarks/http/alloc.sh takes the trace.
// Prints the share of sampled bytes by type, by "owner" (the first frame of the stack, innermost first, that names one
// of the parts below: the gateway's stages, ASP.NET Core's and System.Net.Http's layers), and by owner and type.
// Usage: pgw-alloctrace TRACE.nettrace [rows] [type]   (with a type, or part of its name: also its top allocating stacks)
//
// With --enqueues, the trace is of the thread pool's enqueue events instead (FrameworkEventSource, ThreadPoolEnqueueWork,
// each with its stack: benchmarks/http/alloc.sh HOPS=1 takes it): every hand-off of work to another thread-pool thread,
// grouped by the frames that queued it (the tracing frames left out).
// Usage: pgw-alloctrace --enqueues TRACE.nettrace [rows] [frames]
//
// With --gc, the trace is of the runtime's GC events (benchmarks/http/rss-trace.sh GC_TRACE=1 takes it): one line per
// collection — when, which generation and why, how many heaps, the pause, each generation's size after it and what it
// promoted — to see what sets the GC's committed memory (its budgets, the heap count DATAS chose, what survives).
// Usage: pgw-alloctrace --gc TRACE.nettrace
//
// With --large, the same kind of trace taken at the verbose level (Microsoft-Windows-DotNETRuntime:0x1:5, as
// benchmarks/http/paired.sh GC_TRACE=large takes it): every sampled allocation on the large object heap of 1 MB or more,
// with its time, type, size and allocating stack — what makes the GC's live data, and the budgets that follow it, jump.
// Usage: pgw-alloctrace --large TRACE.nettrace
if (args.Length >= 2 && args[0] == "--enqueues")
{
    return Enqueues(args[1], args.Length > 2 ? int.Parse(args[2]) : 12, args.Length > 3 ? int.Parse(args[3]) : 7);
}

if (args.Length >= 2 && args[0] == "--large")
{
    return LargeObjects(args[1]);
}

if (args.Length >= 2 && args[0] == "--gc")
{
    return Collections(args[1]);
}

if (args.Length < 1)
{
    Console.Error.WriteLine("usage: pgw-alloctrace TRACE.nettrace [rows] [type] | pgw-alloctrace --enqueues TRACE.nettrace [rows] [frames] | pgw-alloctrace --gc TRACE.nettrace | pgw-alloctrace --large TRACE.nettrace");
    return 2;
}

string[] owners =
[
    "Kestrel.Core.Internal.Http.HttpProtocol+<ProcessRequests>", "HostingApplication", "LoggingScopeHttpMessageHandler",
    "LoggingHttpMessageHandler", "Polly", "Resilience", "RedirectHandler", "DecompressionHandler", "HttpConnection",
    "HttpClient", "JsonBody", "CreateRequest", "HttpChatProvider+<CompleteAsync>", "HttpChatProvider+<SendAsync>",
    "ChatCompletionsEndpoint.WriteGatewayHeaders", "ChatCompletionsEndpoint", "AnthropicMessagesEndpoint", "RequestLog",
    "Metrics", "GatewayQueue", "WorkItem", "ProviderWorkerPool", "RouterStage", "Admission", "FrontDoor", "TraceContext",
    "Routing", "Sqlite",
];
var rows = args.Length > 1 ? int.Parse(args[1]) : 40;
var stackOf = args.Length > 2 ? args[2] : null;
var byStack = new Dictionary<string, long>();
var byType = new Dictionary<string, long>();
var byOwner = new Dictionary<string, long>();
var byOwnerAndType = new Dictionary<string, long>();
long total = 0;
using var log = TraceLog.OpenOrConvert(TraceLog.CreateFromEventPipeDataFile(args[0]));
foreach (var e in log.Events)
{
    if (e is not GCAllocationTickTraceData tick)
    {
        continue;
    }

    var type = tick.TypeName ?? "?";
    var owner = "(other)";
    for (var frame = e.CallStack(); frame is not null; frame = frame.Caller)
    {
        var name = frame.CodeAddress.FullMethodName;
        if (!string.IsNullOrEmpty(name) && owners.FirstOrDefault(name.Contains) is { } found)
        {
            owner = found;
            break;
        }
    }

    total += tick.AllocationAmount64;
    if (stackOf is not null && type.Contains(stackOf, StringComparison.Ordinal))
    {
        var frames = new List<string>();
        for (var frame = e.CallStack(); frame is not null && frames.Count < 8; frame = frame.Caller)
        {
            frames.Add(frame.CodeAddress.FullMethodName is { Length: > 0 } method ? method : "?");
        }

        Add(byStack, type + "\n      " + string.Join("\n      ", frames), tick.AllocationAmount64);
    }

    Add(byType, type, tick.AllocationAmount64);
    Add(byOwner, owner, tick.AllocationAmount64);
    Add(byOwnerAndType, owner + " | " + type, tick.AllocationAmount64);
}

Console.WriteLine($"sampled {total / 1e6:F1} MB");
Print("by owner", byOwner);
Print("by type", byType);
Print("by owner and type", byOwnerAndType);
if (stackOf is not null)
{
    Print($"stacks allocating {stackOf}", byStack);
}

return 0;

void Print(string title, Dictionary<string, long> shares)
{
    Console.WriteLine($"-- {title}");
    foreach (var (key, bytes) in shares.OrderByDescending(kv => kv.Value).Take(rows))
    {
        Console.WriteLine($"{100.0 * bytes / Math.Max(1, total),6:F2}%  {key}");
    }
}

static void Add(Dictionary<string, long> into, string key, long bytes) =>
    into[key] = into.GetValueOrDefault(key) + bytes;

static int Enqueues(string path, int rows, int depth)
{
    var byStack = new Dictionary<string, long>();
    long total = 0;
    using var trace = TraceLog.OpenOrConvert(TraceLog.CreateFromEventPipeDataFile(path));
    foreach (var e in trace.Events)
    {
        if (e.EventName != "ThreadPoolEnqueueWork")
        {
            continue;
        }

        total++;
        var frames = new List<string>();
        for (var frame = e.CallStack(); frame is not null && frames.Count < depth; frame = frame.Caller)
        {
            var name = frame.CodeAddress.FullMethodName is { Length: > 0 } method ? method : "?";
            if (!name.Contains("Diagnostics.Tracing", StringComparison.Ordinal))
            {
                frames.Add(name.Length > 150 ? name[..150] : name);
            }
        }

        var key = string.Join("\n      ", frames);
        byStack[key] = byStack.GetValueOrDefault(key) + 1;
    }

    Console.WriteLine($"{total} thread-pool enqueues");
    foreach (var (key, count) in byStack.OrderByDescending(kv => kv.Value).Take(rows))
    {
        Console.WriteLine($"{100.0 * count / Math.Max(1, total),6:F2}%  {key}");
    }

    return 0;
}

static int Collections(string path)
{
    using var source = new Microsoft.Diagnostics.Tracing.EventPipeEventSource(path);
    Microsoft.Diagnostics.Tracing.Analysis.TraceLoadedDotNetRuntimeExtensions.NeedLoadedDotNetRuntimes(source);
    source.Process();
    foreach (var process in Microsoft.Diagnostics.Tracing.Analysis.TraceProcessesExtensions.Processes(source))
    {
        var runtime = Microsoft.Diagnostics.Tracing.Analysis.TraceLoadedDotNetRuntimeExtensions.LoadedDotNetRuntime(process);
        if (runtime is null)
        {
            continue;
        }

        Console.WriteLine("    s    #  gen reason              heaps  pause ms  gen0/gen1/gen2/loh after MB  promoted MB  allocated since last MB");
        foreach (var gc in runtime.GC.GCs)
        {
            Console.WriteLine(
                $"{gc.StartRelativeMSec / 1000,5:F1} {gc.Number,4}  {gc.Generation,3} {gc.Reason,-18} {gc.HeapCount,6} {gc.PauseDurationMSec,9:F2}  " +
                $"{gc.GenSizeAfterMB(Gens.Gen0),6:F1} {gc.GenSizeAfterMB(Gens.Gen1),6:F1} " +
                $"{gc.GenSizeAfterMB(Gens.Gen2),6:F1} {gc.GenSizeAfterMB(Gens.GenLargeObj),6:F1}  " +
                $"{gc.PromotedMB,10:F2}  {gc.AllocedSinceLastGCMB,10:F1}");
        }
    }

    return 0;
}

static int LargeObjects(string path)
{
    using var log = TraceLog.OpenOrConvert(TraceLog.CreateFromEventPipeDataFile(path));
    var start = -1.0;
    foreach (var e in log.Events)
    {
        start = start < 0 ? e.TimeStampRelativeMSec : start;
        if (e is not GCAllocationTickTraceData { AllocationKind: GCAllocationKind.Large } tick || tick.ObjectSize < 1_000_000)
        {
            continue;
        }

        Console.WriteLine($"{(e.TimeStampRelativeMSec - start) / 1000,7:F1} s  {tick.ObjectSize / 1e6,7:F1} MB  {tick.TypeName}");
        var depth = 0;
        for (var frame = e.CallStack(); frame is not null && depth < 14; frame = frame.Caller, depth++)
        {
            Console.WriteLine($"      {(frame.CodeAddress.FullMethodName is { Length: > 0 } method ? method : "?")}");
        }
    }

    return 0;
}
