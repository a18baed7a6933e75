using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PipelineGateway.Providers;

namespace PipelineGateway.Hosting;

/// <summary>
/// Every log line through the <see cref="SecretRedactor"/> before any provider writes it: the gateway redacts at the
/// source too, but a framework's or a library's message (an exception text quoting a connection string, a handler
/// logging a header) must not be the one line that leaks a key. Messages reach the wrapped provider already formatted.
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

            var message = SecretRedactor.Redact(formatter(state, exception));
            var error = exception is null ? null : new RedactedException(exception);
            inner.Log(logLevel, eventId, message, error, static (m, _) => m);
        }
    }

    /// <summary>An exception's text, redacted; its type and stack are kept in the text.</summary>
    private sealed class RedactedException(Exception original) : Exception(SecretRedactor.Redact(original.Message))
    {
        private readonly string _text = SecretRedactor.Redact(original.ToString());

        public override string ToString() => _text;
    }
}
