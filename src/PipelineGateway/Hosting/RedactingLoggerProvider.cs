using System.Buffers;
using System.Globalization;
using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;

namespace PipelineGateway.Hosting;

/// <summary>
/// Every log line through the <see cref="SecretRedactor"/> before any provider writes it: the gateway redacts at the
/// source too, but a framework's or a library's message (an exception text quoting a connection string, a handler
/// logging a header) must not be the one line that leaks a key. Messages reach the wrapped provider already formatted —
/// and with their control characters written out (<see cref="Printable"/>): a caller's path (<c>%0D</c>, <c>%1B</c>
/// decoded by Kestrel) or an upstream's error text reached the console raw, a carriage return overwriting the line
/// shown with a forged one, an escape sequence driving the terminal of whoever read the log.
/// </summary>
internal sealed class RedactingLoggerProvider(ILoggerProvider inner) : ILoggerProvider
{
    public ILogger CreateLogger(string categoryName) => new RedactingLogger(inner.CreateLogger(categoryName));

    public void Dispose() => inner.Dispose();

    /// <summary>Wraps every logger provider registered so far in <paramref name="services"/>.</summary>
    public static void WrapAll(IServiceCollection services)
    {
        for (var i = 0; i < services.Count; i++)
        {
            var d = services[i];
            if (d.ServiceType != typeof(ILoggerProvider) || d.ImplementationType == typeof(RedactingLoggerProvider))
            {
                continue;
            }

            services[i] = ServiceDescriptor.Singleton<ILoggerProvider>(sp => new RedactingLoggerProvider(d switch
            {
                { ImplementationInstance: ILoggerProvider instance } => instance,
                { ImplementationFactory: { } factory } => (ILoggerProvider)factory(sp),
                _ => (ILoggerProvider)ActivatorUtilities.CreateInstance(sp, d.ImplementationType!),
            }));
        }
    }

    private sealed class RedactingLogger(ILogger inner) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => inner.BeginScope(state);

        public bool IsEnabled(LogLevel logLevel) => inner.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!inner.IsEnabled(logLevel))
            {
                return;
            }

            var message = Printable(SecretRedactor.Redact(formatter(state, exception)), keepLineBreaks: false);
            var error = exception is null ? null : new RedactedException(exception);
            inner.Log(logLevel, eventId, message, error, static (m, _) => m);
        }
    }

    /// <summary>An exception's text, redacted; its type and stack are kept in the text.</summary>
    private sealed class RedactedException(Exception original) : Exception(Printable(SecretRedactor.Redact(original.Message), keepLineBreaks: true))
    {
        private readonly string _text = Printable(SecretRedactor.Redact(original.ToString()), keepLineBreaks: true);

        public override string ToString() => _text;
    }

    // C0 controls, DEL and C1 controls (U+0080–U+009F: a terminal may read U+009B as an escape sequence's start).
    private static readonly SearchValues<char> Controls = SearchValues.Create(
        [.. Enumerable.Range(0, 0x20).Select(static c => (char)c), '\u007f', .. Enumerable.Range(0x80, 0x20).Select(static c => (char)c)]);

    /// <summary>
    /// <paramref name="text"/> with its control characters written out — <c>\r</c>, <c>\n</c>, <c>\t</c>, else
    /// <c>\u001b</c> and the like — so a log line is one line of text whatever a caller or an upstream put in it; an
    /// exception's text keeps its line breaks (<paramref name="keepLineBreaks"/>: its stack), nothing else. Text without
    /// any is returned as it is (no copy).
    /// </summary>
    internal static string Printable(string text, bool keepLineBreaks)
    {
        var at = text.AsSpan().IndexOfAny(Controls);
        if (at < 0)
        {
            return text;
        }

        var b = new StringBuilder(text.Length + 16).Append(text.AsSpan(0, at));
        foreach (var c in text.AsSpan(at))
        {
            switch (c)
            {
                case '\n' or '\r' when keepLineBreaks:
                    b.Append(c);
                    break;
                case '\n':
                    b.Append("\\n");
                    break;
                case '\r':
                    b.Append("\\r");
                    break;
                case '\t':
                    b.Append("\\t");
                    break;
                case < ' ' or '\u007f' or (>= '\u0080' and <= '\u009f'):
                    b.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    break;
                default:
                    b.Append(c);
                    break;
            }
        }

        return b.ToString();
    }
}
