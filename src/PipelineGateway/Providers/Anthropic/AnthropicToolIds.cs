using System.Buffers;
using System.Security.Cryptography;
using System.Text;

namespace PipelineGateway.Providers.Anthropic;

/// <summary>
/// Tool-call ids as Claude takes them. Anthropic refuses a request whose <c>tool_use.id</c> or <c>tool_result.tool_use_id</c>
/// is not <c>^[a-zA-Z0-9_-]+$</c> ("String should match pattern"), and a conversation begun on another model carries
/// that model's ids: Kimi K2's are <c>functions.get_weather:0</c>, MCP-qualified names put dots in them — so every
/// later step of such a conversation sent to a Claude deployment (a model switch, a fallback, a route to Claude) was a
/// 400. Written to Claude, such an id has each other character made <c>_</c> and 32 bits of its SHA-256 appended (two
/// ids that differ only there stay two); the same id always becomes the same, so a call and its result still pair and
/// Claude's prompt cache still sees the same prefix. Only on the way to Claude: a valid id is sent as it is, and ids are
/// never changed in what callers get (Kimi needs its own ids back as they were).
/// </summary>
internal static class AnthropicToolIds
{
    private static readonly SearchValues<char> Allowed = SearchValues.Create("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");

    /// <summary>Whether Claude takes <paramref name="id"/> as it is (empty is not: the pattern needs one character).</summary>
    public static bool IsValid(string? id) => !string.IsNullOrEmpty(id) && !id.AsSpan().ContainsAnyExcept(Allowed);

    /// <summary><paramref name="id"/> as Claude takes it; null and empty stay as they are (nothing to pair them by).</summary>
    public static string? ForClaude(string? id)
    {
        if (string.IsNullOrEmpty(id) || IsValid(id))
        {
            return id;
        }

        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(Encoding.UTF8.GetBytes(id), hash);
        var made = new StringBuilder(id.Length + 9);
        foreach (var c in id)
        {
            made.Append(Allowed.Contains(c) ? c : '_');
        }

        return made.Append('_').Append(Convert.ToHexStringLower(hash[..4])).ToString();
    }
}
