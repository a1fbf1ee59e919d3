/* Peak float32 multiply-add rate of this CPU: the hard ceiling for any matmul, XLA's included.

   gcc -O3 -mavx512f -mfma -fopenmp bench/fma_peak.c -o /tmp/fma_peak
   OMP_NUM_THREADS=2 /tmp/fma_peak        # both cores
   OMP_NUM_THREADS=1 /tmp/fma_peak        # one core

   Each thread runs 12 independent chains of 512-bit fused multiply-adds (16 float32 lanes, 2
   FLOP each), enough to cover the FMA latency, with no memory traffic; the best of 5 runs is
   printed in GFLOP/s. bench_train_step.py --ceiling divides the FLOPs of one update by rates
   like this one. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#define CHAINS 12
#define ROUNDS 16000000L

int main(void) {
    double best = 0.0;
    for (int run = 0; run < 5; run++) {
        float sink = 0.0f;
        double start = omp_get_wtime();
#pragma omp parallel reduction(+ : sink)
        {
            __m512 acc[CHAINS];
            const __m512 scale = _mm512_set1_ps(1.0000001f), shift = _mm512_set1_ps(1e-7f);
            for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
            for (long r = 0; r < ROUNDS; r++)
                for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], scale, shift);
            for (int c = 0; c < CHAINS; c++) sink += _mm512_reduce_add_ps(acc[c]);
        }
        double seconds = omp_get_wtime() - start;
        double gflops = (double)omp_get_max_threads() * ROUNDS * CHAINS * 16 * 2 / seconds / 1e9;
        printf("run %d: %.1f GFLOP/s with %d threads (checksum %g)\n", run, gflops,
               omp_get_max_threads(), sink);
        if (gflops > best) best = gflops;
    }
    printf("best %.1f GFLOP/s\n", best);
    return 0;
}
