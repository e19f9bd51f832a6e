/* A stand-in bcryptprimitives.dll for Wine 8 only (a test fixture, never
 * shipped): Rust's std gets random bytes from ProcessPrng, which Windows 10
 * and later export from bcryptprimitives.dll and Wine 8 does not. This
 * forwards it to RtlGenRandom (SystemFunction036 in advapi32), which Wine
 * has. Built by tests/wine/run.sh with mingw-w64. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
