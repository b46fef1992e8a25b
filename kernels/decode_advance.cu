// End of a decode step: publish the step's next id to page-locked host memory and advance the
// device position, so that consecutive decode graphs need no copies between them (a 4-byte
// host-to-device copy of the position before each step and a device-to-host copy of the id after
// it, each a copy-engine round trip on the stream).
//  - One warp, of which thread 0 works. Launched with PDL; it waits for the step's last kernel
//    (the argmax or sampler that wrote *id), and by the chaining of the waits (common.cuh) every
//    kernel of the step that read *pos has completed before the position changes.
//  - The id goes to host slot (new position & 1): two steps in flight produce ids for consecutive
//    positions, so they never share a slot. __threadfence_system orders the store before the grid
//    completes (the host reads the slot after an event recorded behind this kernel).
//  - *pos is read by the next step's kernels before their PDL wait (the RoPE entry); that step is
//    a new graph launch, which starts after this grid has completed.
#include "common.cuh"

__global__ void decode_advance_kernel(const int32_t *__restrict__ id, int32_t *__restrict__ pos, int32_t *slot0,
                                      int32_t *slot1) {
    pdl_launch_dependents();
    pdl_wait();
    if (threadIdx.x != 0) return;  // one thread reads and advances the position
    const int32_t p = *pos + 1;
    volatile int32_t *dst = (p & 1) ? slot1 : slot0;
    *dst = *id;
    __threadfence_system();
    *pos = p;
}

extern "C" cudaError_t infer_decode_advance(const int32_t *next_id, int32_t *pos_dev, int32_t *host_slot0,
                                            int32_t *host_slot1, cudaStream_t stream) {
    INFER_CHECK_ARG(next_id && pos_dev && host_slot0 && host_slot1);
    INFER_LAUNCH(decode_advance_kernel, dim3(1), dim3(32), 0, stream, next_id, pos_dev, host_slot0, host_slot1);
    return cudaGetLastError();
}
