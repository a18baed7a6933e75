using System.ComponentModel.DataAnnotations;

namespace PipelineGateway.Server;

/// <summary>The HTTP front door (section <c>Gateway:Server</c>).</summary>
public sealed class ServerOptions
{
    public const string SectionName = "Gateway:Server";

    /// <summary>Gateway (virtual) keys, stored as SHA-256 hashes: never the keys themselves.</summary>
    public List<GatewayKeyOptions> Keys { get; set; } = [];

    /// <summary>Request bodies above this size get 413.</summary>
    [Range(1024, int.MaxValue)]
    public int MaxRequestBodyBytes { get; set; } = 4 * 1024 * 1024;

    /// <summary>SSE comment keep-alives while a stream waits for its first token.</summary>
    public TimeSpan StreamKeepAlive { get; set; } = TimeSpan.FromSeconds(15);
}

/// <summary>One gateway key: its hash, its id (used for rate limits, budgets and the cache namespace) and what it may use.</summary>
public sealed class GatewayKeyOptions
{
    [Required(AllowEmptyStrings = false)]
    public string Id { get; set; } = string.Empty;

    /// <summary>Lower-case hex SHA-256 of the key, e.g. from <c>printf %s "$KEY" | sha256sum</c>.</summary>
    [Required(AllowEmptyStrings = false)]
    [RegularExpression("^[0-9a-fA-F]{64}$", ErrorMessage = "Sha256 must be 64 hex characters (the SHA-256 of the key).")]
    public string Sha256 { get; set; } = string.Empty;

    /// <summary>Model names or aliases this key may use; empty means all.</summary>
    public List<string> AllowedModels { get; set; } = [];
}
