using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Providers;

/// <summary>A file part of a multipart request: the field it came in (<c>file</c>, <c>image[]</c>, <c>mask</c>) and the file.</summary>
internal sealed record FilePart(string Field, Upload File);

/// <summary>
/// The multipart requests the pipeline carries (transcriptions, image edits): the form's text fields checked and kept as
/// one JSON object (a repeated field a list of strings), its files as <see cref="FilePart"/>s, and the form the upstream
/// gets again — the fields as sent, the deployment's model, the files byte for byte.
/// </summary>
internal static class Forms
{
    /// <summary>A field's single value (null when absent), refused when it is given more than once.</summary>
    public static string? Field(IReadOnlyList<KeyValuePair<string, string>> fields, string name)
    {
        string? value = null;
        foreach (var (key, v) in fields)
        {
            if (key == name)
            {
                value = value is null ? v : throw new InvalidRequestException(name, $"'{name}' is given more than once.");
            }
        }

        return value;
    }

    /// <summary>Every field's name is a plain name: it goes upstream as a part's header, which a control character or a quote would break.</summary>
    public static void CheckNames(IReadOnlyList<KeyValuePair<string, string>> fields)
    {
        foreach (var (key, _) in fields)
        {
            if (key.Length is 0 or > 64 || !key.All(static c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-' or '[' or ']'))
            {
                throw new InvalidRequestException(null, "A form field's name must be 1 to 64 letters, digits, '_', '.', '-', '[' or ']'.");
            }
        }
    }

    /// <summary>The fields as one JSON object (repeated names a list), the model the pipeline's.</summary>
    public static JsonElement Json(IReadOnlyList<KeyValuePair<string, string>> fields, string model)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("model", model);
            foreach (var group in fields.Where(static f => f.Key != "model").GroupBy(static f => f.Key, StringComparer.Ordinal))
            {
                if (group.Key.EndsWith("[]", StringComparison.Ordinal) || group.Count() > 1)
                {
                    w.WriteStartArray(group.Key);
                    foreach (var (_, value) in group)
                    {
                        w.WriteStringValue(value);
                    }

                    w.WriteEndArray();
                }
                else
                {
                    w.WriteString(group.Key, group.First().Value);
                }
            }

            w.WriteEndObject();
        }

        using var doc = JsonDocument.Parse(buffer.WrittenMemory);
        return doc.RootElement.Clone();
    }

    /// <summary>The upstream's form: the fields (the deployment's model) and the files, as the caller sent them.</summary>
    public static MultipartFormDataContent Upstream(OperationRequest operation, string model)
    {
        var form = new MultipartFormDataContent();
        form.Add(new StringContent(model), "model");
        foreach (var field in operation.Body.EnumerateObject())
        {
            if (field.NameEquals("model"))
            {
                continue;
            }

            if (field.Value.ValueKind == JsonValueKind.Array)
            {
                foreach (var value in field.Value.EnumerateArray())
                {
                    form.Add(new StringContent(value.GetString()!), field.Name);
                }
            }
            else
            {
                form.Add(new StringContent(field.Value.GetString()!), field.Name);
            }
        }

        foreach (var (name, upload) in operation.Files!)
        {
            var file = new ReadOnlyMemoryContent(upload.Bytes);
            if (upload.ContentType is { } type && System.Net.Http.Headers.MediaTypeHeaderValue.TryParse(type, out var media))
            {
                file.Headers.ContentType = media;
            }

            form.Add(file, name, upload.FileName);
        }

        return form;
    }
}
