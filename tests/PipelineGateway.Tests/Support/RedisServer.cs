using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using StackExchange.Redis;

namespace PipelineGateway.Tests.Support;

/// <summary>
/// A real Redis for tests. The shared one is the server CI starts (<c>PGW_TEST_REDIS=127.0.0.1:PORT</c>), or, under a
/// plain <c>dotnet test</c> on a machine with <c>redis-server</c>, one this test process starts on 127.0.0.1 and a free
/// port the first time a test asks, and kills when it exits. Tests that stop and restart Redis start a private
/// <c>redis-server</c> of their own. Where neither is available (a machine without Redis), the tests are skipped and
/// say why; CI always has Redis.
/// </summary>
public sealed class RedisServer : IAsyncDisposable
{
    public const string EnvironmentVariable = "PGW_TEST_REDIS";
    private Process? _process;
    private readonly string _dir;

    private RedisServer(int port)
    {
        Port = port;
        _dir = Directory.CreateTempSubdirectory("pgw-redis-").FullName;
    }

    public int Port { get; }

    public string Configuration => $"127.0.0.1:{Port}";

    /// <summary>The address of the shared test Redis, or skips the test when there is none.</summary>
    public static string Shared()
    {
        var address = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(address))
        {
            return address;
        }

        if (OwnShared.Value is { } own)
        {
            return own.Configuration;
        }

        Assert.Skip($"No Redis for this test: set {EnvironmentVariable}=host:port (.ci/run starts one), or install redis-server.");
        return string.Empty;
    }

    /// <summary>This process's own shared server when no address is given and redis-server is installed; stopped at exit.</summary>
    private static readonly Lazy<RedisServer?> OwnShared = new(() =>
    {
        if (FindServer() is null)
        {
            return null;
        }

        // Started off the test's synchronization context: a blocking wait on it could otherwise wait for itself.
        var server = Task.Run(StartAsync).GetAwaiter().GetResult();
        AppDomain.CurrentDomain.ProcessExit += (_, _) => server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        return server;
    });

    /// <summary>Starts a private redis-server (no persistence) on a free loopback port.</summary>
    public static async Task<RedisServer> StartAsync()
    {
        if (FindServer() is not { } binary)
        {
            Assert.Skip("redis-server is not installed (apt-get install -y redis-server); .ci/run installs it.");
        }

        var server = new RedisServer(FreePort());
        await server.StartAsync(FindServer()!);
        return server;
    }

    public async Task StartAsync(string? binary = null)
    {
        var info = new ProcessStartInfo(binary ?? FindServer()!)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[] { "--port", Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", _dir })
        {
            info.ArgumentList.Add(a);
        }

        _process = Process.Start(info)!;
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        await Wait.Until(Answers, $"redis-server on port {Port} answers");
    }

    /// <summary>Stops the server at once (SIGKILL: like a crash or a network cut).</summary>
    public async Task StopAsync()
    {
        if (_process is { HasExited: false })
        {
            _process.Kill();
            await _process.WaitForExitAsync();
        }

        _process?.Dispose();
        _process = null;
    }

    private bool Answers()
    {
        try
        {
            using var c = new TcpClient();
            c.Connect(IPAddress.Loopback, Port);
            using var s = c.GetStream();
            s.Write("PING\r\n"u8);
            var buffer = new byte[16];
            var n = s.Read(buffer);
            return n > 0 && buffer[0] == (byte)'+';
        }
        catch (SocketException)
        {
            return false;
        }
        catch (IOException)
        {
            return false;
        }
    }

    public static IDatabase Connect(string configuration) => ConnectionMultiplexer.Connect(configuration).GetDatabase();

    private static string? FindServer() =>
        (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':').Select(d => Path.Combine(d, "redis-server")).FirstOrDefault(File.Exists);

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
