using System.CommandLine;
using System.Globalization;
using PipelineGateway.Batch;
using PipelineGateway.Redis;
using PipelineGateway.Simulator;

namespace PipelineGateway.Cli;

/// <summary>
/// The <c>pgw</c> command tree on System.CommandLine: every command has <c>--help</c>, every option a description and
/// a checked range, an unknown option (<c>--concurency</c>) is an error naming it, and <c>--version</c> prints the
/// version. The commands' work is in <see cref="DemoCommand"/>, <see cref="BatchCommand"/>, <see cref="ServeCommand"/>
/// and <see cref="SimulateCommand"/>.
/// </summary>
internal static class Commands
{
    public static RootCommand Create(TextWriter output)
    {
        var root = new RootCommand("pgw — PipelineGateway, an LLM gateway on a bounded channel pipeline.\n\n"
            + "Configuration: --config FILE, else config/gateway.json in the working directory or a parent, else the embedded default "
            + "(simulated providers, no keys needed). Environment variables prefixed PGW_ override settings, for example PGW_Gateway__Pipeline__MaxInFlight=256.");
        root.Subcommands.Add(Demo(output));
        root.Subcommands.Add(Batch(output));
        root.Subcommands.Add(Serve(output));
        root.Subcommands.Add(Simulate(output));
        root.Subcommands.Add(Usage(output));
        return root;
    }

    private static Option<bool> Json() => new("--json") { Description = "End with the full metrics snapshot as JSON instead of the summary tables." };

    private static Option<bool> NoLog() => new("--no-log") { Description = "Write no request log (default: one row per request in SQLite at Gateway:RequestLog:Path, pgw-data/gateway.db beside the config)." };

    private static Option<string?> Config() => new("--config") { Description = "The gateway configuration file (JSON with a Gateway section)." };

    private static Option<int> Whole(string name, int fallback, int min, int max, string description)
    {
        var option = new Option<int>(name) { Description = $"{description} ({min}–{max.ToString("N0", CultureInfo.InvariantCulture)}).", DefaultValueFactory = _ => fallback };
        option.Validators.Add(result =>
        {
            if (result.GetValueOrDefault<int>() is var value && (value < min || value > max))
            {
                result.AddError($"{name} must be a whole number from {min} to {max}; got {value}.");
            }
        });
        return option;
    }

    private static Command Demo(TextWriter output)
    {
        var config = Config();
        var concurrency = Whole("--concurrency", 64, 1, 100_000, "Requests in flight at once");
        var dir = new Option<string?>("--output") { Description = "The directory for the sample input, the results, the errors and the request log (default: a new temporary directory)." };
        var json = Json();
        var command = new Command("demo", "Run the built-in sample batch through the gateway (simulated providers with a flaky primary, duplicate prompts, a tight rate limit; no keys needed), then print the metrics summary.")
        {
            config, concurrency, dir, json,
        };
        command.SetAction((p, stop) => DemoCommand.RunAsync(p.GetValue(config), p.GetValue(concurrency), p.GetValue(dir), p.GetValue(json), output, stop));
        return command;
    }

    private static Command Batch(TextWriter output)
    {
        var input = new Argument<string>("input") { Description = "The OpenAI Batch API input file (JSONL: custom_id, method, url, body)." };
        var result = new Option<string>("--output", "-o") { Description = "The results file, in the Batch output format.", Required = true };
        var errors = new Option<string?>("--errors") { Description = "The errors file (default: OUTPUT with .errors.jsonl)." };
        var concurrency = Whole("--concurrency", 128, 1, 100_000, "Requests in flight at once");
        var retryFailed = new Option<bool>("--retry-failed") { Description = "Run the requests that failed before again." };
        var config = Config();
        var redis = new Option<string?>("--redis") { Description = "Work one batch from several machines through a Redis Stream (a StackExchange.Redis connection string); every machine ends with the complete output." };
        var batchId = new Option<string?>("--batch-id") { Description = "The shared batch's id (with --redis; default: from the input file)." };
        var claimAfter = Whole("--claim-after", 120, 1, 86_400, "Seconds before a line another machine took and did not finish is taken over (with --redis)");
        var noLog = NoLog();
        var json = Json();
        var command = new Command("batch", "Run an OpenAI Batch API input file through the gateway; results in the Batch output format. Killed or stopped, the same command again continues where it stopped (each custom_id answered once).")
        {
            input, result, errors, concurrency, retryFailed, config, redis, batchId, claimAfter, noLog, json,
        };
        command.Validators.Add(c =>
        {
            if (c.GetValue(redis) is not null && c.GetValue(retryFailed))
            {
                c.AddError("--retry-failed works on a local batch's files; a shared (--redis) batch keeps its results in Redis. Run the failed lines as a new batch instead.");
            }
        });
        command.SetAction((p, stop) =>
        {
            var options = new BatchOptions
            {
                InputPath = p.GetValue(input)!,
                OutputPath = p.GetValue(result)!,
                ErrorsPath = p.GetValue(errors),
                Concurrency = p.GetValue(concurrency),
                RetryFailed = p.GetValue(retryFailed),
                Extra = PipelineGateway.Server.Responses.ResponsesBatch.Endpoint(TimeProvider.System), // /v1/responses lines too
            };
            var shared = p.GetValue(redis) is { } connection
                ? new RedisBatchOptions { Configuration = connection, BatchId = p.GetValue(batchId), ClaimAfter = TimeSpan.FromSeconds(p.GetValue(claimAfter)) }
                : null;
            return BatchCommand.RunAsync(p.GetValue(config), options, shared, p.GetValue(noLog), p.GetValue(json), output, stop);
        });
        return command;
    }

    private static Command Serve(TextWriter output)
    {
        var urls = new Option<string>("--urls") { Description = "Where to listen (default http://127.0.0.1:8080). Off loopback, gateway keys are required.", DefaultValueFactory = _ => "http://127.0.0.1:8080" };
        var config = Config();
        var noLog = NoLog();
        var command = new Command("serve", "Run the HTTP front door: OpenAI /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings, /v1/moderations, /v1/images/generations, /v1/images/edits, /v1/audio/speech, /v1/audio/transcriptions, /v1/audio/translations, /v1/rerank and /v1/models (and Azure OpenAI's deployment routes), Anthropic /v1/messages, the admin surface (/v1/gateway/metrics, /v1/gateway/logs, /v1/gateway/spend, /metrics), /healthz and /readyz. SIGTERM or Ctrl+C drains in-flight requests.")
        {
            urls, config, noLog,
        };
        command.SetAction((p, _) => ServeCommand.RunAsync(p.GetValue(config), p.GetValue(urls)!, p.GetValue(noLog), output));
        return command;
    }

    private static Command Usage(TextWriter output)
    {
        var db = new Option<string?>("--db") { Description = "The request log file (default: Gateway:RequestLog:Path of the configuration, pgw-data/gateway.db beside it)." };
        var by = new Option<string>("--by") { Description = "Group by key, model, deployment, day or user (the end user a request named: user, safety_identifier, metadata.user_id).", DefaultValueFactory = _ => "key" };
        by.AcceptOnlyFromAmong("key", "model", "deployment", "day", "user");
        var since = new Option<string>("--since") { Description = "From when: 30m, 24h, 7d, 2w, or an ISO 8601 date or time (UTC).", DefaultValueFactory = _ => "7d" };
        since.Validators.Add(r =>
        {
            if (!RequestLog.TimeSpec.TryParse(r.GetValueOrDefault<string>(), DateTimeOffset.UtcNow, out _))
            {
                r.AddError($"--since must be {RequestLog.TimeSpec.Help}; got '{r.GetValueOrDefault<string>()}'.");
            }
        });
        var config = Config();
        var command = new Command("usage", "Print who spent what from the request log: requests, failures, tokens and cost grouped by key, model, deployment, day or user.")
        {
            db, by, since, config,
        };
        command.SetAction((p, stop) => UsageCommand.RunAsync(p.GetValue(db), p.GetValue(config), p.GetValue(by)!, p.GetValue(since)!, output, stop));
        return command;
    }

    private static Command Simulate(TextWriter output)
    {
        var urls = new Option<string>("--urls") { Description = "Where to listen (default http://127.0.0.1:8081).", DefaultValueFactory = _ => "http://127.0.0.1:8081" };
        var numbers = new (string Name, string Description, Action<SimulatorOptions, double> Set, double Min, double Max)[]
        {
            ("--latency-ms", "Time before the answer (or the first chunk)", (o, v) => o.LatencyMs = v, 0, 3_600_000),
            ("--jitter-ms", "Random extra latency, up to", (o, v) => o.JitterMs = v, 0, 3_600_000),
            ("--token-delay-ms", "Time between streamed chunks", (o, v) => o.TokenDelayMs = v, 0, 60_000),
            ("--error-rate", "Share of requests answered with --error-status", (o, v) => o.ErrorRate = v, 0, 1),
            ("--error-status", "The status of those errors (500, 503 or 529)", (o, v) => o.ErrorStatus = (int)v, 400, 599),
            ("--rate-limit-rate", "Share of requests answered 429", (o, v) => o.RateLimitRate = v, 0, 1),
            ("--retry-after", "Retry-After seconds on a 429", (o, v) => o.RetryAfterSeconds = v, 0, 86_400),
            ("--hang-rate", "Share of requests that never answer", (o, v) => o.HangRate = v, 0, 1),
            ("--break-rate", "Share of streams cut after a few chunks", (o, v) => o.BreakRate = v, 0, 1),
            ("--truncate-rate", "Share of whole answers cut mid-body", (o, v) => o.TruncateRate = v, 0, 1),
            ("--completion-words", "Words in each answer", (o, v) => o.CompletionWords = (int)v, 1, 100_000),
            ("--context-window", "Tokens above which a prompt is refused as too long", (o, v) => o.ContextWindow = (int)v, 1, 10_000_000),
            ("--seed", "Seed of the random faults (same seed, same faults)", (o, v) => o.Seed = (int)v, int.MinValue, int.MaxValue),
        };
        var options = numbers.Select(n =>
        {
            var option = new Option<double?>(n.Name) { Description = $"{n.Description} ({n.Min.ToString(CultureInfo.InvariantCulture)}–{n.Max.ToString(CultureInfo.InvariantCulture)})." };
            option.Validators.Add(r =>
            {
                if (r.GetValueOrDefault<double?>() is { } v && (v < n.Min || v > n.Max || double.IsNaN(v)))
                {
                    r.AddError($"{n.Name} must be from {n.Min.ToString(CultureInfo.InvariantCulture)} to {n.Max.ToString(CultureInfo.InvariantCulture)}; got {v.ToString(CultureInfo.InvariantCulture)}.");
                }
            });
            return (Option: option, n.Set);
        }).ToArray();
        var apiKeyEnv = new Option<string?>("--api-key-env") { Description = "The environment variable holding the API key callers must send (default: none required)." };
        var openAIExtras = new Option<bool>("--openai-extras") { Description = "Streamed OpenAI events as OpenAI sends them: with service_tier, system_fingerprint and obfuscation (random padding), members the gateway does not model." };
        var command = new Command("simulate", "Run the upstream simulator: OpenAI /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/moderations, /v1/images/generations, /v1/images/edits, /v1/audio/speech, /v1/audio/transcriptions, /v1/audio/translations, /v1/rerank and /v1/models, Anthropic /v1/messages, whole and streamed, with faults drawn at the rates given or scripted per request (header x-sim-fault, e.g. status=429;retry-after=2).")
        {
            urls, apiKeyEnv, openAIExtras,
        };
        foreach (var (option, _) in options)
        {
            command.Options.Add(option);
        }

        command.SetAction((p, stop) =>
        {
            var simulator = new SimulatorOptions();
            foreach (var (option, set) in options)
            {
                if (p.GetValue(option) is { } value)
                {
                    set(simulator, value);
                }
            }

            simulator.OpenAIExtras = p.GetValue(openAIExtras);
            if (p.GetValue(apiKeyEnv) is { } variable)
            {
                simulator.ApiKey = Environment.GetEnvironmentVariable(variable);
            }

            return SimulateCommand.RunAsync(simulator, p.GetValue(urls)!, output, stop);
        });
        return command;
    }
}
