namespace PipelineGateway.Cost;

/// <summary>
/// Where budget accounts live when several gateway instances spend from the same budgets (for example Redis, in
/// PipelineGateway.Redis). Reservation is all or nothing across the accounts that apply to a request, so a
/// fleet can overspend a budget by at most what its requests in flight were reserved for and then exceeded.
/// </summary>
internal interface IDistributedBudgetStore
{
    /// <summary>What happens when the store cannot be reached: true uses this instance's local accounts.</summary>
    bool FailOpen { get; }

    /// <summary>Reserves <paramref name="estimateNanoUsd"/> in every account, or in none.</summary>
    ValueTask<BudgetReservationResult> TryReserveAsync(IReadOnlyList<BudgetAccountRef> accounts, long estimateNanoUsd, CancellationToken cancellationToken);

    /// <summary>Replaces a reservation with the actual cost; in the background (the task ends when it is done), never throws or faults.</summary>
    Task SettleAsync(IReadOnlyList<BudgetAccountRef> accounts, long estimateNanoUsd, long actualNanoUsd);

    /// <summary>What an account has spent and holds reserved now (0 and 0 when it has none yet); null when the store cannot be reached.</summary>
    ValueTask<(long SpentNanoUsd, long ReservedNanoUsd)?> ReadAsync(BudgetAccountRef account, CancellationToken cancellationToken);
}

/// <summary>One budget's account for one key and period: the same id on every instance with the same budgets.</summary>
/// <param name="Id">Budget and key, e.g. <c>0:team-a</c>.</param>
/// <param name="Period">The UTC day (<c>d20261125</c>) or month (<c>m202611</c>) the account is for.</param>
/// <param name="LimitNanoUsd">The budget's limit in nano-dollars.</param>
/// <param name="Lifetime">How long the account must outlive now (the rest of its period, plus a margin).</param>
/// <param name="DisplayName">The budget's name, for refusals.</param>
internal sealed record BudgetAccountRef(string Id, string Period, long LimitNanoUsd, TimeSpan Lifetime, string DisplayName)
{
    /// <summary>
    /// A budget for every user: the most user accounts it keeps in a period across the fleet (0: not such a budget).
    /// A reservation that would make a new account past it is refused (<see cref="BudgetReservationResult.NoRoomForUser"/>).
    /// </summary>
    public int MaxUsers { get; init; }

    /// <summary>With <see cref="MaxUsers"/>: the budget's set of users for the period (the same on every instance).</summary>
    public string? UsersId { get; init; }
}

internal readonly record struct BudgetReservationResult
{
    public bool Reserved { get; init; }

    /// <summary>When refused: the account that refused (index into the list) and what it had spent and reserved.</summary>
    public int RefusedBy { get; init; }

    public long SpentAndReservedNanoUsd { get; init; }

    /// <summary>When refused: the account refused is a new user's, past its budget's <see cref="BudgetAccountRef.MaxUsers"/>.</summary>
    public bool NoRoomForUser { get; init; }

    /// <summary>The store could not be reached.</summary>
    public bool Unavailable { get; init; }
}
