using System.Text.Json;
using System.Text.Json.Nodes;

namespace PipelineGateway.Tests.Support;

/// <summary>A temporary folder with batch input and result files, removed afterwards.</summary>
public sealed class BatchFiles : IDisposable
{
    public BatchFiles()
    {
        Dir = Directory.CreateTempSubdirectory("pgw-batch-test-").FullName;
    }

    public string Dir { get; }

    public string Input => Path.Combine(Dir, "input.jsonl");

    public string Output => Path.Combine(Dir, "output.jsonl");

    public string Errors => Path.Combine(Dir, "output.errors.jsonl");

    /// <summary>One simulated provider slow enough (50 ms, 4 workers: ~80 lines/s) for a run to be stopped in the middle.</summary>
    public const string SlowConfig = """
        {
          "Gateway": {
            "Providers": [ { "Name": "sim", "Type": "Simulated", "Workers": 4, "QueueCapacity": 64, "Simulated": { "LatencyMs": 50, "Seed": 1 } } ],
            "Models": [ { "Name": "m", "Deployments": [ { "Provider": "sim", "Model": "m" } ] } ]
          }
        }
        """;

    /// <summary>Writes <see cref="SlowConfig"/> into the folder and returns its path.</summary>
    public async Task<string> WriteSlowConfigAsync(CancellationToken cancellationToken)
    {
        var path = Path.Combine(Dir, "gateway.json");
        await File.WriteAllTextAsync(path, SlowConfig, cancellationToken);
        return path;
    }

    public static string RequestLine(string customId, string model = "m", string text = "Hello!") =>
        new JsonObject
        {
            ["custom_id"] = customId,
            ["method"] = "POST",
            ["url"] = "/v1/chat/completions",
            ["body"] = new JsonObject
            {
                ["model"] = model,
                ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = text }),
            },
        }.ToJsonString();

    /// <summary>Writes <paramref name="count"/> request lines with custom_ids <c>req-0</c>… and distinct prompts.</summary>
    public void WriteRequests(int count, string model = "m") =>
        File.WriteAllLines(Input, Enumerable.Range(0, count).Select(i => RequestLine($"req-{i}", model, $"prompt {i}")));

    public static List<JsonElement> ReadRecords(string path) =>
        File.Exists(path)
            ? File.ReadLines(path).Where(l => l.Length > 0).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList()
            : [];

    /// <summary>An errors-file record's code: a bad line's <c>error.code</c>, a failed request's error body code (its <c>error</c> is null).</summary>
    public static string? ErrorCode(JsonElement record) =>
        record.GetProperty("error") is { ValueKind: JsonValueKind.Object } error
            ? error.GetProperty("code").GetString()
            : record.GetProperty("response").GetProperty("body").GetProperty("error").GetProperty("code").GetString();

    public List<JsonElement> OutputRecords => ReadRecords(Output);

    public List<JsonElement> ErrorRecords => ReadRecords(Errors);

    /// <summary>Every custom_id with a result, output and errors together (request results only, not bad lines).</summary>
    public List<string> AnsweredIds() =>
        OutputRecords.Concat(ErrorRecords.Where(r => r.GetProperty("response").ValueKind == JsonValueKind.Object))
            .Select(r => r.GetProperty("custom_id").GetString()!)
            .ToList();

    public void Dispose()
    {
        try
        {
            Directory.Delete(Dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
