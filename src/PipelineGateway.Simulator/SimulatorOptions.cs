using System.Globalization;

namespace PipelineGateway.Simulator;

/// <summary>
/// How the upstream simulator behaves for the whole server. Any request can override it with the header
/// <c>x-sim-fault</c> (see <see cref="FaultPlan"/>), so tests and load runs can script faults per request.
/// </summary>
public sealed class SimulatorOptions
{
    /// <summary>Time before the whole answer, or before the first chunk of a stream.</summary>
    public double LatencyMs { get; set; }

    /// <summary>Uniform jitter on <see cref="LatencyMs"/>.</summary>
    public double JitterMs { get; set; }

    /// <summary>Delay between streamed chunks.</summary>
    public double TokenDelayMs { get; set; }

    /// <summary>Share of requests answered with <see cref="ErrorStatus"/> (0..1).</summary>
    public double ErrorRate { get; set; }

    /// <summary>500, 503 or 529 (Anthropic's overloaded).</summary>
    public int ErrorStatus { get; set; } = 503;

    /// <summary>Share of requests answered 429 with a Retry-After of <see cref="RetryAfterSeconds"/>.</summary>
    public double RateLimitRate { get; set; }

    public double RetryAfterSeconds { get; set; } = 1;

    /// <summary>Share of requests that hang until the client gives up.</summary>
    public double HangRate { get; set; }

    /// <summary>Share of streams whose connection is aborted after a few chunks.</summary>
    public double BreakRate { get; set; }

    /// <summary>Share of streams that end early without their terminating event.</summary>
    public double TruncateRate { get; set; }

    /// <summary>Completion length in words when the request sets no max_tokens (and the cap when it does).</summary>
    public int CompletionWords { get; set; } = 24;

    /// <summary>Prompts estimated above this many tokens get a context-length error.</summary>
    public int ContextWindow { get; set; } = 128_000;

    /// <summary>When set, requests must carry this key (Bearer / x-api-key / api-key), as the real APIs require.</summary>
    public string? ApiKey { get; set; }

    public int Seed { get; set; } = 1;

    /// <summary>
    /// Streamed events as OpenAI sends them, with the members the gateway does not model: <c>service_tier</c>,
    /// <c>system_fingerprint</c>, and <c>obfuscation</c> (random padding of varying length on every event).
    /// </summary>
    public bool OpenAIExtras { get; set; }

    /// <summary>Reads <c>--latency-ms 20 --error-rate 0.1 …</c> style arguments.</summary>
    public static SimulatorOptions Parse(IReadOnlyList<string> args, out string urls)
    {
        var o = new SimulatorOptions();
        urls = "http://127.0.0.1:8081";
        for (var i = 0; i < args.Count; i++)
        {
            var name = args[i];
            string Next() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"The option '{name}' needs a value.");
            double D() => double.Parse(Next(), CultureInfo.InvariantCulture);
            int I() => int.Parse(Next(), CultureInfo.InvariantCulture);
            switch (name)
            {
                case "--urls": urls = Next(); break;
                case "--latency-ms": o.LatencyMs = D(); break;
                case "--jitter-ms": o.JitterMs = D(); break;
                case "--token-delay-ms": o.TokenDelayMs = D(); break;
                case "--error-rate": o.ErrorRate = D(); break;
                case "--error-status": o.ErrorStatus = I(); break;
                case "--rate-limit-rate": o.RateLimitRate = D(); break;
                case "--retry-after": o.RetryAfterSeconds = D(); break;
                case "--hang-rate": o.HangRate = D(); break;
                case "--break-rate": o.BreakRate = D(); break;
                case "--truncate-rate": o.TruncateRate = D(); break;
                case "--completion-words": o.CompletionWords = I(); break;
                case "--context-window": o.ContextWindow = I(); break;
                case "--api-key-env": o.ApiKey = Environment.GetEnvironmentVariable(Next()); break;
                case "--seed": o.Seed = I(); break;
                case "--openai-extras": o.OpenAIExtras = true; break;
                default: throw new ArgumentException($"Unknown simulator option '{name}'.");
            }
        }

        return o;
    }
}

/// <summary>
/// What happens to one request: drawn from the server options, or scripted by the request header
/// <c>x-sim-fault</c>, a <c>;</c>-separated list such as <c>status=429;retry-after=2</c>, <c>status=529</c>,
/// <c>hang</c>, <c>break-after=3</c>, <c>truncate-after=3</c>, <c>latency-ms=250</c>, <c>context-length</c>,
/// <c>status=400;code=invalid_value;param=temperature;message=...</c> (the error body's fields),
/// <c>stream-error=overloaded_error</c> (an error event right after the stream's opening).
/// </summary>
public sealed record FaultPlan
{
    public int? Status { get; init; }

    public double? RetryAfterSeconds { get; init; }

    public bool Hang { get; init; }

    public int? BreakAfter { get; init; }

    public int? TruncateAfter { get; init; }

    public double LatencyMs { get; init; }

    public bool ContextLength { get; init; }

    /// <summary>The error body's type, code, param and message for a scripted status (defaults by status).</summary>
    public string? Type { get; init; }

    public string? Code { get; init; }

    public string? Param { get; init; }

    public string? Message { get; init; }

    /// <summary>
    /// An error sent inside the stream right after its opening (a role-only chunk on OpenAI, <c>message_start</c> on
    /// Anthropic), of this type: <c>overloaded_error</c> is how Anthropic reports overload mid-stream.
    /// </summary>
    public string? StreamError { get; init; }

    public static FaultPlan Draw(SimulatorOptions o, Random random, string? header)
    {
        if (!string.IsNullOrWhiteSpace(header))
        {
            return FromHeader(header, o);
        }

        var latency = Math.Max(0, o.LatencyMs + (o.JitterMs * ((random.NextDouble() * 2) - 1)));
        var roll = random.NextDouble();
        if (roll < o.ErrorRate)
        {
            return new FaultPlan { Status = o.ErrorStatus, LatencyMs = latency };
        }

        roll -= o.ErrorRate;
        if (roll < o.RateLimitRate)
        {
            return new FaultPlan { Status = 429, RetryAfterSeconds = o.RetryAfterSeconds, LatencyMs = latency };
        }

        roll -= o.RateLimitRate;
        if (roll < o.HangRate)
        {
            return new FaultPlan { Hang = true };
        }

        roll -= o.HangRate;
        if (roll < o.BreakRate)
        {
            return new FaultPlan { BreakAfter = 2, LatencyMs = latency };
        }

        roll -= o.BreakRate;
        return roll < o.TruncateRate ? new FaultPlan { TruncateAfter = 2, LatencyMs = latency } : new FaultPlan { LatencyMs = latency };
    }

    private static FaultPlan FromHeader(string header, SimulatorOptions o)
    {
        var plan = new FaultPlan { LatencyMs = o.LatencyMs };
        foreach (var part in header.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var kv = part.Split('=', 2, StringSplitOptions.TrimEntries);
            var value = kv.Length == 2 ? kv[1] : null;
            plan = kv[0] switch
            {
                "status" => plan with { Status = int.Parse(value!, CultureInfo.InvariantCulture) },
                "retry-after" => plan with { RetryAfterSeconds = double.Parse(value!, CultureInfo.InvariantCulture) },
                "hang" => plan with { Hang = true },
                "break-after" => plan with { BreakAfter = int.Parse(value!, CultureInfo.InvariantCulture) },
                "truncate-after" => plan with { TruncateAfter = int.Parse(value!, CultureInfo.InvariantCulture) },
                "latency-ms" => plan with { LatencyMs = double.Parse(value!, CultureInfo.InvariantCulture) },
                "context-length" => plan with { ContextLength = true },
                "type" => plan with { Type = value },
                "code" => plan with { Code = value },
                "param" => plan with { Param = value },
                "message" => plan with { Message = value },
                "stream-error" => plan with { StreamError = value ?? "overloaded_error" },
                _ => plan,
            };
        }

        return plan;
    }
}
