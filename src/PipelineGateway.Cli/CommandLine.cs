namespace PipelineGateway.Cli;

/// <summary>A small parser for <c>pgw COMMAND [ARGS] [--name value] [--flag]</c>.</summary>
internal sealed class CommandLine
{
    private readonly Dictionary<string, string?> _options = new(StringComparer.Ordinal);

    private CommandLine(string command, List<string> positional)
    {
        Command = command;
        Positional = positional;
    }

    public string Command { get; }

    public IReadOnlyList<string> Positional { get; }

    public static CommandLine Parse(string[] args, IReadOnlySet<string> flags)
    {
        if (args.Length == 0)
        {
            return new CommandLine("help", []);
        }

        var positional = new List<string>();
        var line = new CommandLine(args[0], positional);
        for (var i = 1; i < args.Length; i++)
        {
            var a = args[i];
            if (a.StartsWith("--", StringComparison.Ordinal) || (a.StartsWith('-') && a.Length == 2))
            {
                var name = a.TrimStart('-');
                var eq = name.IndexOf('=', StringComparison.Ordinal);
                if (eq > 0)
                {
                    line._options[name[..eq]] = name[(eq + 1)..];
                }
                else if (flags.Contains(name))
                {
                    line._options[name] = "true";
                }
                else if (i + 1 < args.Length)
                {
                    line._options[name] = args[++i];
                }
                else
                {
                    throw new CliException($"The option '{a}' needs a value.");
                }
            }
            else
            {
                positional.Add(a);
            }
        }

        return line;
    }

    public string? Get(string name) => _options.GetValueOrDefault(name);

    public bool Has(string name) => _options.ContainsKey(name);

    public int GetInt(string name, int fallback, int min, int max)
    {
        var raw = Get(name);
        if (raw is null)
        {
            return fallback;
        }

        if (!int.TryParse(raw, System.Globalization.CultureInfo.InvariantCulture, out var value) || value < min || value > max)
        {
            throw new CliException($"--{name} must be a whole number from {min} to {max}; got '{raw}'.");
        }

        return value;
    }
}
