namespace PipelineGateway.Serialization;

/// <summary>
/// A bounded table of immutable entries in sets of two, for the caches that keep what a request's bytes or texts
/// make (tool lists read, the cache key's canonical forms): a hash picks the set, an entry goes to an empty way
/// first, else to the way the hash's high half picks — so two entries often used together that share a set both stay,
/// where one slot per hash had them replace each other on every request. Entries are published with a release write
/// and read whole on any thread; the hash must be seeded by the caller (no client may aim at another's set).
/// </summary>
internal sealed class TwoWaySets<TEntry>(int setBits)
    where TEntry : class
{
    private readonly TEntry?[] _ways = new TEntry?[2 << setBits];
    private readonly int _mask = (1 << setBits) - 1;

    /// <summary>The two entries of <paramref name="hash"/>'s set (either may be null).</summary>
    public (TEntry? First, TEntry? Second) Of(ulong hash)
    {
        var set = Set(hash);
        return (Volatile.Read(ref _ways[set]), Volatile.Read(ref _ways[set + 1]));
    }

    /// <summary>Puts <paramref name="entry"/> in <paramref name="hash"/>'s set.</summary>
    public void Keep(ulong hash, TEntry entry)
    {
        var set = Set(hash);
        var way = Volatile.Read(ref _ways[set]) is null ? 0 : Volatile.Read(ref _ways[set + 1]) is null ? 1 : (int)(hash >> 32) & 1;
        Volatile.Write(ref _ways[set + way], entry);
    }

    private int Set(ulong hash) => ((int)hash & _mask) << 1;
}
