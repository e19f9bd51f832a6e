#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Installs aios-cell to start at boot and come back when it stops, as a
    Windows Scheduled Task; -Uninstall removes it.

.DESCRIPTION
    aios-cell.exe is a console program, not a Windows service (it does not
    answer the Service Control Manager), so `sc.exe create` would start it
    and then kill it after 30 seconds. A scheduled task runs it as it is:

    - Trigger: at system startup, repeated every minute. With
      MultipleInstances = IgnoreNew the repetition does nothing while the
      cell runs and starts it again within a minute after it exits or
      crashes. (The task's own "restart on failure" setting only covers a
      task that fails to launch, not a program that exits with an error,
      so it is set as well but is not what brings the cell back.)
    - Account: LOCAL SERVICE by default (no admin rights, no password);
      -Account System or NetworkService if needed.
    - No time limit, runs on battery.
    - Configuration: -Environment takes the same AIOS_* variables as the
      cell's environment and passes them as the equivalent command-line
      flags (a scheduled task has no environment of its own), and
      -ConfigFile installs a TOML file (see config/aios-cell.toml).
    - State (identity key, saved level) in -DataDir, readable only by the
      cell's account, SYSTEM and Administrators.
    - Logs: the cell logs to stderr, which a scheduled task does not keep.
      Run the same command line in a console to watch it, or use NSSM
      (below), whose AppStderr setting writes the log to a file.

    To stop the cell, disable the task first, or the repetition starts it
    again:  Disable-ScheduledTask aios-cell; Stop-ScheduledTask aios-cell
    To start it again:  Enable-ScheduledTask aios-cell; Start-ScheduledTask aios-cell

    Stopping the task ends the process without a console signal, so peers
    see the cell as "failed" (after the ping timeout, 2 s) rather than
    "left". For a real service with a clean stop, NSSM (https://nssm.cc)
    can wrap the binary instead; it sends Ctrl-C on stop, which the cell
    handles like SIGTERM:
        nssm install aios-cell "C:\Program Files\aios-cell\aios-cell.exe" run
        nssm set aios-cell AppEnvironmentExtra AIOS_DATA_DIR=C:\ProgramData\aios-cell\data
        nssm set aios-cell AppStopMethodConsole 10000
    (Use one or the other, not both.)

.PARAMETER Binary
    The aios-cell.exe to install. Default: aios-cell.exe beside this script,
    else target\release\aios-cell.exe of the repository.

.PARAMETER InstallDir
    Where the binary goes. Default: $env:ProgramFiles\aios-cell.

.PARAMETER DataDir
    The cell's state folder (AIOS_DATA_DIR). Default:
    $env:ProgramData\aios-cell\data.

.PARAMETER ConfigFile
    A TOML config file to install as <DataDir>\aios-cell.toml and pass
    with --config. Optional.

.PARAMETER Environment
    AIOS_* settings, e.g. @{ AIOS_CELL_ID = 'desktop'; AIOS_NETWORK_PEERS = 'aios-laptop.local:8001' }.
    Each becomes the cell's flag of the same name (AIOS_CELL_ID -> --cell-id,
    AIOS_NETWORK_PEERS -> --peers). They are stored in the task's command
    line, which administrators can read: put AIOS_API_TOKEN in a file and
    pass AIOS_API_TOKEN_FILE instead.

.PARAMETER Account
    LocalService (default), NetworkService or System.

.PARAMETER TaskName
    Default: aios-cell.

.PARAMETER OpenFirewall
    Also run open-firewall.ps1 (beside this script) for the installed binary.

.PARAMETER Uninstall
    Stop and remove the task and the installed binary. The data dir stays
    (it holds the cell's identity) unless -RemoveData is given too.

.PARAMETER RemoveData
    With -Uninstall: delete the data dir (and the config installed in it).

.EXAMPLE
    .\install-service.ps1 -Binary .\aios-cell.exe -Environment @{ AIOS_CELL_ID = 'desktop'; AIOS_NETWORK_PEERS = 'aios-laptop.local:8001' } -OpenFirewall
.EXAMPLE
    .\install-service.ps1 -Uninstall
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [string] $Binary,
    [string] $InstallDir = (Join-Path $env:ProgramFiles 'aios-cell'),
    [string] $DataDir = (Join-Path $env:ProgramData 'aios-cell\data'),
    [string] $ConfigFile,
    [hashtable] $Environment = @{},
    [ValidateSet('LocalService', 'NetworkService', 'System')]
    [string] $Account = 'LocalService',
    [string] $TaskName = 'aios-cell',
    [switch] $OpenFirewall,
    [switch] $Uninstall,
    [switch] $RemoveData
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# Well-known SIDs: the task and the ACLs use these, which do not depend on
# the language of Windows (account names do).
$accountSid = @{ System = 'S-1-5-18'; LocalService = 'S-1-5-19'; NetworkService = 'S-1-5-20' }[$Account]
$exe = Join-Path $InstallDir 'aios-cell.exe'
$installedConfig = Join-Path $DataDir 'aios-cell.toml'

function ConvertTo-CellFlag {
    # AIOS_CELL_ID -> --cell-id. The one variable whose flag has another
    # name is AIOS_NETWORK_PEERS (--peers).
    param([Parameter(Mandatory = $true)] [string] $Name)
    if ($Name -notmatch '^AIOS_[A-Z0-9_]+$') {
        throw "'$Name' is not an AIOS_* variable"
    }
    if ($Name -eq 'AIOS_NETWORK_PEERS') { return '--peers' }
    if ($Name -eq 'AIOS_API') { throw 'AIOS_API is for the client verbs, not for a running cell' }
    return '--' + $Name.Substring(5).ToLowerInvariant().Replace('_', '-')
}

function ConvertTo-Argument {
    # Quotes one argument for the Windows command line (CommandLineToArgvW
    # rules: backslashes before a quote are doubled, quotes escaped).
    param([Parameter(Mandatory = $true)] [AllowEmptyString()] [string] $Value)
    if ($Value -ne '' -and $Value -notmatch '[\s"]') { return $Value }
    $escaped = $Value -replace '(\\*)"', '$1$1\"'
    $escaped = $escaped -replace '(\\+)$', '$1$1'
    return '"' + $escaped + '"'
}

if ($Uninstall) {
    $task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if ($task) {
        if ($PSCmdlet.ShouldProcess($TaskName, 'Stop and remove scheduled task')) {
            # Disable first so the every-minute repetition cannot restart it.
            Disable-ScheduledTask -TaskName $TaskName | Out-Null
            Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
            Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false
            Write-Host "removed task $TaskName"
        }
    } else {
        Write-Host "no task named $TaskName"
    }
    # The process may take a moment to exit after the task stops.
    $deadline = (Get-Date).AddSeconds(10)
    while ((Get-Process -Name 'aios-cell' -ErrorAction SilentlyContinue |
            Where-Object { $_.Path -eq $exe }) -and (Get-Date) -lt $deadline) {
        Start-Sleep -Milliseconds 500
    }
    if (Test-Path -LiteralPath $InstallDir) {
        if ($PSCmdlet.ShouldProcess($InstallDir, 'Remove install dir')) {
            Remove-Item -LiteralPath $InstallDir -Recurse -Force
            Write-Host "removed $InstallDir"
        }
    }
    if ($RemoveData) {
        if ((Test-Path -LiteralPath $DataDir) -and $PSCmdlet.ShouldProcess($DataDir, 'Remove')) {
            Remove-Item -LiteralPath $DataDir -Recurse -Force
            Write-Host "removed $DataDir"
        }
    } elseif (Test-Path -LiteralPath $DataDir) {
        Write-Host "kept the data dir $DataDir (the cell's identity); -RemoveData deletes it"
    }
    Write-Host "firewall rules, if any, stay: $(Join-Path $PSScriptRoot 'open-firewall.ps1') -Remove"
    return
}

# --- install ------------------------------------------------------------------

if (-not $Binary) {
    $candidates = @(
        (Join-Path $PSScriptRoot 'aios-cell.exe'),
        (Join-Path $PSScriptRoot '..\..\target\release\aios-cell.exe')
    )
    $Binary = $candidates | Where-Object { Test-Path -LiteralPath $_ -PathType Leaf } | Select-Object -First 1
    if (-not $Binary) {
        throw "No aios-cell.exe found ($($candidates -join ', ')). Build it with 'cargo build --release' or pass -Binary."
    }
}
if (-not (Test-Path -LiteralPath $Binary -PathType Leaf)) {
    throw "Binary '$Binary' does not exist."
}
$Binary = (Resolve-Path -LiteralPath $Binary).Path
if ($ConfigFile -and -not (Test-Path -LiteralPath $ConfigFile -PathType Leaf)) {
    throw "Config file '$ConfigFile' does not exist."
}

# Build the arguments first, so that a bad -Environment fails before
# anything is changed.
$cellArgs = New-Object System.Collections.Generic.List[string]
$cellArgs.Add('run')
$cellArgs.Add('--data-dir=' + $DataDir)
if ($ConfigFile) { $cellArgs.Add('--config=' + $installedConfig) }
foreach ($name in ($Environment.Keys | Sort-Object)) {
    $flag = ConvertTo-CellFlag -Name ([string] $name)
    if ($flag -eq '--data-dir' -or ($flag -eq '--config' -and $ConfigFile)) {
        throw "$name conflicts with -DataDir/-ConfigFile; use those parameters instead"
    }
    $cellArgs.Add($flag + '=' + [string] $Environment[$name])
}
$argumentLine = ($cellArgs | ForEach-Object { ConvertTo-Argument -Value $_ }) -join ' '

# If the task exists, stop it so the binary can be replaced.
$existing = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
if ($existing -and $PSCmdlet.ShouldProcess($TaskName, 'Stop the running task')) {
    Disable-ScheduledTask -TaskName $TaskName | Out-Null
    Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    Start-Sleep -Seconds 2
}

if ($PSCmdlet.ShouldProcess($exe, "Install $Binary")) {
    New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
    if ($Binary -ne $exe) {
        Copy-Item -LiteralPath $Binary -Destination $exe -Force
    }
    Write-Host "installed $exe ($(& $exe --version))"
}

if ($PSCmdlet.ShouldProcess($DataDir, 'Create data dir and restrict access')) {
    New-Item -ItemType Directory -Force -Path $DataDir | Out-Null
    # The identity key lives here: no inherited "Users can read" from
    # ProgramData. Full control for Administrators and SYSTEM, modify for the
    # cell's account.
    $grants = @('*S-1-5-32-544:(OI)(CI)F', '*S-1-5-18:(OI)(CI)F')
    if ($accountSid -ne 'S-1-5-18') { $grants += "*${accountSid}:(OI)(CI)M" }
    & icacls.exe $DataDir /inheritance:r /grant:r @grants | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "icacls failed on $DataDir (exit $LASTEXITCODE)" }
    if ($ConfigFile) {
        Copy-Item -LiteralPath $ConfigFile -Destination $installedConfig -Force
        Write-Host "installed config $installedConfig"
    }
}

$action = New-ScheduledTaskAction -Execute $exe -Argument $argumentLine -WorkingDirectory $InstallDir
$trigger = New-ScheduledTaskTrigger -AtStartup
# An at-startup trigger takes its repetition from a one-time trigger's
# (New-ScheduledTaskTrigger -AtStartup has no -RepetitionInterval). No
# duration = repeat for as long as the system runs.
$trigger.Repetition = (New-ScheduledTaskTrigger -Once -At (Get-Date) -RepetitionInterval (New-TimeSpan -Minutes 1)).Repetition
$principal = New-ScheduledTaskPrincipal -UserId $accountSid -LogonType ServiceAccount -RunLevel Limited
$settings = New-ScheduledTaskSettingsSet `
    -MultipleInstances IgnoreNew `
    -ExecutionTimeLimit ([TimeSpan]::Zero) `
    -RestartCount 999 `
    -RestartInterval (New-TimeSpan -Minutes 1) `
    -StartWhenAvailable `
    -AllowStartIfOnBatteries `
    -DontStopIfGoingOnBatteries `
    -DontStopOnIdleEnd

if ($PSCmdlet.ShouldProcess($TaskName, 'Register scheduled task')) {
    Register-ScheduledTask -TaskName $TaskName `
        -Description 'aios-cell: this machine''s cell of the AIOS mesh. Managed by scripts/windows/install-service.ps1.' `
        -Action $action -Trigger $trigger -Principal $principal -Settings $settings -Force | Out-Null
    Enable-ScheduledTask -TaskName $TaskName | Out-Null
    Start-ScheduledTask -TaskName $TaskName
    Write-Host "registered and started task $TaskName as $Account"
    Write-Host "  $exe $argumentLine"
}

if ($OpenFirewall) {
    & (Join-Path $PSScriptRoot 'open-firewall.ps1') -Program $exe
}

if ($WhatIfPreference) { return }

# Check that it came up. The API is on port 8000 unless AIOS_HTTP_ADDR moved
# it; a wildcard bind answers on loopback.
$apiUrl = 'http://127.0.0.1:8000'
if ($Environment.ContainsKey('AIOS_HTTP_ADDR')) {
    $bind = [string] $Environment['AIOS_HTTP_ADDR']
    $port = $bind -replace '^.*:', ''
    $hostPart = $bind.Substring(0, $bind.Length - $port.Length - 1)
    if ($hostPart -in @('0.0.0.0', '[::]', '')) { $hostPart = '127.0.0.1' }
    $apiUrl = "http://${hostPart}:$port"
}
$deadline = (Get-Date).AddSeconds(20)
$healthy = $false
while (-not $healthy -and (Get-Date) -lt $deadline) {
    Start-Sleep -Seconds 1
    & $exe health --api $apiUrl *> $null
    $healthy = ($LASTEXITCODE -eq 0)
}
if ($healthy) {
    & $exe health --api $apiUrl
} else {
    Write-Warning ("The cell did not answer on $apiUrl/health within 20 s. " +
        "Check: Get-ScheduledTaskInfo $TaskName (LastTaskResult), or run '$exe $argumentLine' in a console to see its log.")
}
