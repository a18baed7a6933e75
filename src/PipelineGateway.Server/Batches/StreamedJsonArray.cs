using System.Buffers;
using System.Text.Json;

namespace PipelineGateway.Server.Batches;

/// <summary>
/// The elements of one array member of a JSON object (<c>{"requests": [ … ]}</c>) read from a stream one whole element
/// at a time, so a body of hundreds of megabytes (a message batch: up to <see cref="ServerOptions.MaxBatchFileBytes"/>)
/// is held as its largest element, not whole — it was read into one document: a 150 MB batch cost the process several
/// times that. The document is checked as it goes by <see cref="Utf8JsonReader"/> (malformed JSON, trailing data, depth:
/// a <see cref="JsonException"/> with the reader's line and position) and as UTF-8; the object's other members are skipped; the
/// member given twice, or not an array, is an <see cref="InvalidRequestException"/> naming it.
/// </summary>
internal sealed class StreamedJsonArray(Stream source, string member)
{
    private const int FirstBufferBytes = 64 * 1024;

    private enum Place
    {
        Start,
        InObject,
        InArray,
        Done,
    }

    private byte[] _buffer = ArrayPool<byte>.Shared.Rent(FirstBufferBytes);
    private int _filled;
    private long _offset; // the body's bytes before the buffer's first
    private bool _final;
    private JsonReaderState _state = new(new JsonReaderOptions { MaxDepth = 64 });
    private Place _place;
    private bool _seen;

    /// <summary>Whether the object had the member at all (known once the elements are read).</summary>
    public bool Found => _seen;

    /// <summary>
    /// Each element's UTF-8 JSON, in order: valid until the next element is asked for. Ends when the whole document has
    /// been read and checked.
    /// </summary>
    public async IAsyncEnumerable<ReadOnlyMemory<byte>> ElementsAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var found = new List<(int Start, int Length)>();
        try
        {
            while (true)
            {
                found.Clear();
                var place = _place;
                var consumed = Step(found);
                if (!System.Text.Unicode.Utf8.IsValid(_buffer.AsSpan(0, consumed)))
                {
                    // The reader does not check the bytes inside strings (a whole body is checked before it is parsed;
                    // this one, as it is read: what is consumed ends at a token's end, never within a character).
                    throw new InvalidRequestException(null, $"The request body is not valid UTF-8 (at byte {_offset + Serialization.JsonProblems.FirstInvalidUtf8(_buffer.AsSpan(0, consumed))}).");
                }

                _offset += consumed;

                if (_final && consumed == 0 && found.Count == 0 && _place == place && _place != Place.Done)
                {
                    // Everything read and nothing more to make of it (the reader throws for a document cut short; this
                    // guards the loop should it not).
                    throw new JsonException("The request body ends before its JSON does.");
                }

                foreach (var (start, length) in found)
                {
                    yield return _buffer.AsMemory(start, length);
                }

                if (_place == Place.Done && _final)
                {
                    yield break;
                }

                // Keep what is not consumed yet (an element not whole), at the front; a buffer it fills is doubled.
                var left = _filled - consumed;
                if (left == _buffer.Length)
                {
                    var larger = ArrayPool<byte>.Shared.Rent(_buffer.Length * 2);
                    _buffer.AsSpan(consumed, left).CopyTo(larger);
                    ArrayPool<byte>.Shared.Return(_buffer);
                    _buffer = larger;
                }
                else
                {
                    _buffer.AsSpan(consumed, left).CopyTo(_buffer);
                }

                _filled = left;
                if (_final)
                {
                    // Everything read, yet the reader wants more: Step throws for a document cut short.
                    continue;
                }

                var read = await source.ReadAsync(_buffer.AsMemory(_filled), cancellationToken).ConfigureAwait(false);
                _filled += read;
                _final = read == 0;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = [];
        }
    }

    /// <summary>
    /// Reads what the buffer holds: the whole elements found (their places in the buffer), returning how many bytes are
    /// consumed — up to the end of the last whole unit (an element, a skipped member, a bracket), the reader's state
    /// saved there.
    /// </summary>
    private int Step(List<(int Start, int Length)> found)
    {
        var reader = new Utf8JsonReader(_buffer.AsSpan(0, _filled), _final, _state);
        var consumed = 0;
        while (true)
        {
            switch (_place)
            {
                case Place.Start:
                    if (!reader.Read())
                    {
                        return consumed;
                    }

                    if (reader.TokenType != JsonTokenType.StartObject)
                    {
                        throw new InvalidRequestException(null, $"The request body must be a JSON object with '{member}'.");
                    }

                    _place = Place.InObject;
                    break;

                case Place.InObject:
                    if (!reader.Read())
                    {
                        return consumed;
                    }

                    if (reader.TokenType == JsonTokenType.EndObject)
                    {
                        _place = Place.Done;
                        break;
                    }

                    if (reader.ValueTextEquals(member))
                    {
                        if (!reader.Read())
                        {
                            return consumed; // the member's name again with its value's first token
                        }

                        if (_seen)
                        {
                            throw new InvalidRequestException(member, $"{member}: given more than once");
                        }

                        if (reader.TokenType != JsonTokenType.StartArray)
                        {
                            throw new InvalidRequestException(member, $"{member}: Input should be a valid list");
                        }

                        _seen = true;
                        _place = Place.InArray;
                        break;
                    }

                    if (!reader.TrySkip())
                    {
                        return consumed; // another member whose value is not all here yet
                    }

                    break;

                case Place.InArray:
                    if (!reader.Read())
                    {
                        return consumed;
                    }

                    if (reader.TokenType == JsonTokenType.EndArray)
                    {
                        _place = Place.InObject;
                        break;
                    }

                    var start = (int)reader.TokenStartIndex;
                    if (!reader.TrySkip())
                    {
                        return consumed; // an element not all here yet
                    }

                    found.Add((start, (int)reader.BytesConsumed - start));
                    break;

                case Place.Done:
                    if (reader.Read())
                    {
                        // The reader refuses what follows the object itself; this is not reached.
                        throw new JsonException("The request body holds more than one JSON value.");
                    }

                    return (int)reader.BytesConsumed;
            }

            consumed = (int)reader.BytesConsumed;
            _state = reader.CurrentState;
        }
    }
}
