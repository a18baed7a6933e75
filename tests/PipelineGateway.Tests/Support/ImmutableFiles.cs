namespace PipelineGateway.Tests.Support;

/// <summary>
/// chattr +i: files and directories nobody may change, root included (the tests may run as root, for whom chmod is no
/// barrier). Every test that sets it clears it in a finally, so its temporary directory can be deleted.
/// </summary>
internal static class ImmutableFiles
{
    /// <summary>Sets or clears the immutable attribute on each existing path; false when chattr fails.</summary>
    public static bool Set(bool on, params string[] paths)
    {
        foreach (var path in paths.Where(p => File.Exists(p) || Directory.Exists(p)))
        {
            using var chattr = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("chattr", [on ? "+i" : "-i", path]) { RedirectStandardError = true });
            chattr!.WaitForExit();
            if (chattr.ExitCode != 0)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Makes the paths immutable, or skips the test where the file system cannot.</summary>
    public static void MakeOrSkip(params string[] paths)
    {
        if (!Set(true, paths))
        {
            Set(false, paths);
            Assert.Skip("chattr +i is not available on this file system (it makes a file read-only for root too).");
        }
    }
}
