using System.Text.Json;

namespace PipelineGateway.Tests.Support;

/// <summary>Tool calls whose arguments are kept as the request's JSON string, as the request reader keeps long ones.</summary>
internal static class KeptCalls
{
    /// <summary>A call whose arguments are kept as the JSON string of <paramref name="text"/>.</summary>
    public static FunctionCall Of(string text)
    {
        var call = new FunctionCall();
        call.KeepArgumentsJson(JsonSerializer.SerializeToUtf8Bytes(text));
        return call;
    }
}
