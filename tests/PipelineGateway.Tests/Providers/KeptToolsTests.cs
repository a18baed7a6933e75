using System.Reflection;
using System.Text;
using System.Text.Json;
using CsCheck;
using FluentAssertions;
using PipelineGateway.Serialization;

namespace PipelineGateway.Tests.Providers;

/// <summary>
/// A <c>tools</c> array read before for the same bytes is not read again (<see cref="KeptToolsCache"/>): the request
/// is what the serializer reads whatever comes before and after the array — other members, a second <c>tools</c>,
/// a trailing comma, a missing one, bytes after the object — and each request's definitions are its own.
/// </summary>
public sealed class KeptToolsTests
{
    private static string Tool(string name, string description) =>
        "{\"type\":\"function\",\"function\":{\"name\":\"" + name + "\",\"description\":\"" + description
        + "\",\"parameters\":{\"type\":\"object\",\"properties\":{\"path\":{\"type\":\"string\",\"description\":\"Where, relative to the root\"}},\"required\":[\"path\"]}}}";

    // Two arrays alike in their first bytes (one set), one alike to the end but for its last definition, a short one.
    private static readonly string[] Arrays =
    [
        $"[{Tool("read", "Reads a file")},{Tool("write", "Writes a file")},{Tool("list", "Lists a directory")}]",
        $"[{Tool("read", "Reads a file")},{Tool("write", "Writes a file")},{Tool("list", "Lists a folder")}]",
        $"[{Tool("read", "Reads a file")},{Tool("write", "Writes a file")},{Tool("list", "Lists a directory")},null]",
        $$$"""[ {{{Tool("grep", "Searches")}}} , {"type":"function","function":{"name":"x"},"cache_control":{"type":"ephemeral"}} ]""",
        """[{"type":"function","function":{"name":"x"}}]""",
    ];

    private static readonly string[] Members =
    [
        "\"model\":\"m\"", "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]", "\"temperature\":0.5",
        "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"read\"}}", "\"metadata\":{\"k\":\"v\"}",
    ];

    // What may follow the array: a member, the object's end, or what makes the body one the serializer refuses.
    private static readonly string[] After = [",", "", ",,", " ", ",\"tools\":[]", "}", "]"];

    private static readonly Gen<string> Bodies =
        Gen.Select(Gen.Int[0, Members.Length].Array[0, 4], Gen.Int[0, Arrays.Length - 1], Gen.Int[0, Members.Length].Array[0, 3], Gen.Int[0, 20], Gen.Int[0, 10],
            static (before, array, after, glue, tail) =>
            {
                var head = string.Concat(before.Select(i => i < Members.Length ? Members[i] + "," : string.Empty));
                var rest = string.Join(",", after.Where(i => i < Members.Length).Select(i => Members[i]));
                var join = glue < After.Length ? After[glue] : rest.Length > 0 ? "," : string.Empty;
                return "{" + head + "\"tools\":" + Arrays[array] + join + rest + "}" + (tail == 0 ? " x" : tail == 1 ? "}" : string.Empty);
            });

    /// <summary>CsCheck, fixed seed: each body read twice by hand (the second time from the kept array) against the serializer.</summary>
    [Fact]
    public void A_kept_array_reads_as_the_serializer_reads_the_body_around_it()
    {
        var found = KeptToolsCache.Shared.Found;
        var (fast, accepted) = (0, 0);
        Bodies.Sample(text =>
        {
            var body = Encoding.UTF8.GetBytes(text);
            var expected = Serialized(() => JsonSerializer.Deserialize(body, PipelineGateway.Server.FrontDoorJsonContext.Default.ChatCompletionRequest));
            accepted += expected.StartsWith("throws", StringComparison.Ordinal) ? 0 : 1;
            for (var i = 0; i < 2; i++)
            {
                if (RequestJson.TryRead(body) is { } request)
                {
                    Serialized(() => request).Should().Be(expected, text);
                    fast++;
                }
            }
        }, iter: 3000, seed: "0N0XIzNsQ0O2", threads: 1);
        fast.Should().BeGreaterThan(accepted * 3 / 2, "most bodies the serializer reads are read by hand both times");
        (KeptToolsCache.Shared.Found - found).Should().BeGreaterThan(1000, "the second reads take the kept arrays");
    }

    [Fact]
    public void Each_request_has_definitions_of_its_own()
    {
        var body = Encoding.UTF8.GetBytes($$"""{"model":"m","messages":[],"tools":{{Arrays[0]}}}""");
        var found = KeptToolsCache.Shared.Found;
        for (var i = 0; i < 3; i++)
        {
            var request = RequestJson.TryRead(body)!; // the first read, then two from the kept array
            request.Tools.Should().HaveCount(3);
            request.Tools![0].Function!.Description.Should().Be("Reads a file");
            request.Tools[1].Type.Should().Be("function");

            request.Tools[0].Function!.Description = "changed by a hook";
            request.Tools[1].Type = "custom";
            request.Tools.RemoveAt(2);
        }

        (KeptToolsCache.Shared.Found - found).Should().BeGreaterThanOrEqualTo(2);
    }

    [Fact]
    public void Members_after_a_kept_array_are_read_by_hand()
    {
        var body = Encoding.UTF8.GetBytes("""{"model":"m","tools":""" + Arrays[3]
            + ""","tool_choice":{"type":"function","function":{"name":"grep"}},"response_format":{"type":"json_object"},"metadata":{"k":"v"},"messages":[{"role":"user","content":"hi"}]}""");
        var expected = Serialized(() => JsonSerializer.Deserialize(body, PipelineGateway.Server.FrontDoorJsonContext.Default.ChatCompletionRequest));

        for (var i = 0; i < 2; i++)
        {
            var request = RequestJson.TryRead(body);
            request.Should().NotBeNull();
            Serialized(() => request).Should().Be(expected);
        }
    }

    /// <summary>A member added to a definition must be copied for each request (KeptToolsCache) and compared (KeyForms).</summary>
    [Fact]
    public void Every_member_of_a_definition_is_one_the_caches_copy_and_compare()
    {
        Names(typeof(ToolDefinition)).Should().Equal("AdditionalProperties", "Function", "Type");
        Names(typeof(FunctionDefinition)).Should().Equal("Description", "Name", "Parameters", "Strict");

        static IEnumerable<string> Names(Type type) =>
            type.GetProperties(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance).Select(p => p.Name).Order(StringComparer.Ordinal);
    }

    private static string Serialized(Func<ChatCompletionRequest?> read)
    {
        try
        {
            return Encoding.UTF8.GetString(JsonSerializer.SerializeToUtf8Bytes(read(), GatewayJsonContext.Default.ChatCompletionRequest));
        }
        catch (Exception ex)
        {
            return "throws " + ex.GetType().Name;
        }
    }
}
