#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Opens Windows Firewall for an aios-cell: TCP 8000 (HTTP API), TCP 9091
    (metrics), TCP 8001 (libp2p), UDP 8001 (libp2p QUIC), UDP 8002 (liveness
    beats) and UDP 5353 (mDNS), inbound.

.DESCRIPTION
    Idempotent: each rule has a fixed name (AIOS-Cell-*), so running the
    script again updates the rules in place instead of adding duplicates.
    All rules share the group "AIOS cell", so they can be listed with
    Get-NetFirewallRule -Group 'AIOS cell'.

    This replaces the seed's phase 1.3 rules for the cell. The seed's other
    ports (Traefik 8080, Prometheus 9090, Grafana 3000, Loki 3100,
    Vault 8200) belong to its other services and are left alone.

    By default the rules accept traffic from the local subnet only, on every
    network profile (Windows often files a home LAN under "Public"). Use
    -RemoteAddress to widen or narrow that (e.g. the seed's two machines:
    -RemoteAddress 192.168.1.128,192.168.1.129).

.PARAMETER RemoteAddress
    Who may connect. Firewall keywords (LocalSubnet, Any) or addresses and
    ranges. Default: LocalSubnet.

.PARAMETER NetworkProfile
    Network profiles the rules apply to. Default: Any.

.PARAMETER Program
    Restrict the rules to this executable (e.g.
    'C:\Program Files\aios-cell\aios-cell.exe'). Default: any program, which
    also covers a cell running in Docker or WSL.

.PARAMETER Remove
    Delete the rules instead.

.EXAMPLE
    .\open-firewall.ps1
.EXAMPLE
    .\open-firewall.ps1 -RemoteAddress 192.168.1.0/24 -Program 'C:\Program Files\aios-cell\aios-cell.exe'
.EXAMPLE
    .\open-firewall.ps1 -Remove
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [string[]] $RemoteAddress = @('LocalSubnet'),

    [ValidateSet('Any', 'Domain', 'Private', 'Public')]
    [string[]] $NetworkProfile = @('Any'),

    [string] $Program,

    [switch] $Remove
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$group = 'AIOS cell'
$rules = @(
    @{ Name = 'AIOS-Cell-HTTP-TCP-8000';    Protocol = 'TCP'; Port = 8000; What = 'HTTP API' },
    @{ Name = 'AIOS-Cell-Metrics-TCP-9091'; Protocol = 'TCP'; Port = 9091; What = 'Prometheus metrics' },
    @{ Name = 'AIOS-Cell-libp2p-TCP-8001';  Protocol = 'TCP'; Port = 8001; What = 'libp2p (TCP)' },
    @{ Name = 'AIOS-Cell-libp2p-UDP-8001';  Protocol = 'UDP'; Port = 8001; What = 'libp2p (QUIC)' },
    @{ Name = 'AIOS-Cell-beats-UDP-8002';   Protocol = 'UDP'; Port = 8002; What = 'liveness beats' },
    @{ Name = 'AIOS-Cell-mDNS-UDP-5353';    Protocol = 'UDP'; Port = 5353; What = 'mDNS discovery' }
)

if ($Program -and -not (Test-Path -LiteralPath $Program -PathType Leaf)) {
    throw "Program '$Program' does not exist. Install aios-cell first or leave -Program out."
}

foreach ($r in $rules) {
    $existing = Get-NetFirewallRule -Name $r.Name -ErrorAction SilentlyContinue

    if ($Remove) {
        if ($existing) {
            if ($PSCmdlet.ShouldProcess($r.Name, 'Remove firewall rule')) {
                Remove-NetFirewallRule -Name $r.Name
                Write-Host "removed  $($r.Name)"
            }
        } else {
            Write-Host "absent   $($r.Name)"
        }
        continue
    }

    $displayName = "AIOS cell: $($r.What) ($($r.Protocol) $($r.Port))"
    $settings = @{
        Description   = "Inbound $($r.Protocol) $($r.Port) for aios-cell ($($r.What)). Managed by scripts/windows/open-firewall.ps1."
        Direction     = 'Inbound'
        Action        = 'Allow'
        Enabled       = 'True'
        Protocol      = $r.Protocol
        LocalPort     = [string] $r.Port
        RemoteAddress = $RemoteAddress
        Profile       = $NetworkProfile
        Program       = $(if ($Program) { $Program } else { 'Any' })
    }

    if ($existing) {
        # Update in place: the same command gives the same rules however
        # often it runs. (Set-NetFirewallRule spells the display name
        # -NewDisplayName, and a rule's group is fixed at creation.)
        if ($PSCmdlet.ShouldProcess($r.Name, 'Update firewall rule')) {
            Set-NetFirewallRule -Name $r.Name -NewDisplayName $displayName @settings
            Write-Host "updated  $($r.Name)"
        }
    } else {
        if ($PSCmdlet.ShouldProcess($r.Name, 'Create firewall rule')) {
            New-NetFirewallRule -Name $r.Name -DisplayName $displayName -Group $group @settings | Out-Null
            Write-Host "created  $($r.Name)"
        }
    }
}

if (-not $Remove) {
    Write-Host ''
    Write-Host "Rules in group '$group':"
    Get-NetFirewallRule -Group $group |
        Sort-Object -Property Name |
        Format-Table -AutoSize -Property 'Name', 'Enabled', 'Profile', 'Direction', 'Action'
}
