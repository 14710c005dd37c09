"""A linear model of the room's echo path beside AEC3, so a user as loud as the echo can be told from it.

AEC3's nonlinear stage turns a user who talks over the reply down by 30-70 dB within ~300 ms. This model only
subtracts a prediction of the echo, so the user's voice stays as it was in what is left (the residual). The
model is a convolutive transfer function: short-time spectra of the reference (20 ms windows every 10 ms), each
bin of the microphone predicted from the same bin of the reference's last PARTITIONS windows. Its weights are
the least-squares solution over the recent past (exponentially forgotten), solved every few blocks: unlike an
LMS step it is as good as the data allows after half a second of speech, which a user 1 s into a reply needs.

The caller says which blocks to learn from (`learn`): only echo alone, never the user's voice.
Pure numpy, one instance per microphone; not thread-safe.
"""

from __future__ import annotations

from collections import deque

import numpy as np

BLOCK = 160  # 10 ms at 16 kHz: the echo canceller's frame, and the hop of the short-time spectra
WINDOW = 2 * BLOCK  # 20 ms windows, half overlapping
BINS = WINDOW // 2 + 1
# The path it models: from 10-20 ms before the echo's first arrival (the canceller places the reference by the
# DAC clock and the room's own delay, EchoCanceller BULK_*) through the room's reverberation until ~40 dB down
# (the test room's allpass decays 60 dB in 0.2 s).
PARTITIONS = 16
FORGET = 0.998  # per learned block: the statistics remember the last ~5 s of echo
# blocks of echo alone between solves: every 100 ms while the model is young (a user may speak 1 s into the
# first reply), then every 250 ms (the room changes slowly; each solve costs ~1-2 ms)
SOLVE_EVERY, SOLVE_EVERY_LATER, YOUNG_BLOCKS = 10, 25, 300
SOLVE_AFTER = 30  # no solve from less echo than this (300 ms): too few equations for the weights
RIDGE = 1e-3  # the least-squares ridge, relative to each bin's reference power: bins the reply barely excites
# stay near zero instead of fitting noise (1e-2 took 1-2 dB less off in the first second: `benchmarks.echo --replay`)
# What is left after subtracting the prediction still holds echo the young model cannot predict yet (in the test
# room it takes off 5-8 dB 1 s into the first reply, the room's linear limit is ~11 dB), about as loud as a user at
# the echo's level: each bin of the residual is turned down by the echo it is expected to keep there, the predicted
# echo's power times what the residual kept of it on recent echo alone (a spectral subtraction). A user speaks where
# the reply is quiet in most bins, so their voice comes through while the echo's leftovers drop 3-8 dB more.
SUPPRESS_FORGET = 0.99  # per learned block: what the residual keeps is learned over the last ~1 s of echo alone
SUPPRESS_PENDING = 20  # ... each block counted 200 ms late, unless a user was found meanwhile (their first syllables)
SUPPRESS_OVER = 2.0  # the expected leftover is subtracted twice over: its spread from frame to frame
SUPPRESS_FLOOR = 0.01  # a bin keeps at least -20 dB of its power (no holes for the VAD to call silence)
SUPPRESS_SMOOTH = 5  # bins (250 Hz) the kept share is averaged over: a bin's own estimate is noisy
# sqrt of a periodic Hann window: applied before and after the transform, half-overlapping windows sum to one
TAPER = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW))


class EchoPath:
    """Reference and microphone blocks (BLOCK samples each, the same scale) in; the previous microphone block
    less the echo predicted for it out (`push`: the windows overlap, so a block's residual is whole one block
    later). `learn(echo_alone)` then adds the pushed block to the statistics; `reset()` forgets the room.

    The reference's correlation matrix per bin is Toeplitz-like in time: its entry (k, l) now is entry
    (k - 1, l - 1) one block ago, so only its first row is accumulated per block (the last PARTITIONS rows are
    kept), and the matrix is assembled from them when solving: O(PARTITIONS) work per bin and block, not its
    square. That holds because every pushed block is learned, the user's too: the reference is no user.
    """

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.partitions = partitions
        self.reset()

    def reset(self) -> None:
        k = self.partitions
        self._rows = np.zeros((k, BINS, k), np.complex64)  # ring: row j % k = sum over blocks i <= j of
        # FORGET^(j-i) X_i conj(X_(i-lag)), per bin and lag
        self._cross = np.zeros((BINS, k), np.complex128)  # per bin: sum of x conj(d) (d: the microphone's bin)
        self._weights: np.ndarray = np.zeros((BINS, k), np.complex128)
        self._left = np.zeros(BINS)  # per bin, forgotten over SUPPRESS_FORGET: the residual's power on echo alone
        self._echo = np.zeros(BINS)  # ... and the predicted echo's
        self._pending: deque[tuple[np.ndarray, np.ndarray]] = deque()  # the last SUPPRESS_PENDING blocks' powers
        self._fresh = 0  # blocks of echo alone learned since the last solve
        self._learned = 0  # ... since reset()
        self._blocks = 0  # blocks learned (the ring's clock)
        self.clear_reference()

    def clear_reference(self) -> None:
        """Forget the reference's recent past (it was placed anew: as if it had been silent); the statistics and
        the weights (the room) are kept."""
        self._spectra = np.zeros((BINS, self.partitions), np.complex128)  # newest first
        self._ref_last = np.zeros(BLOCK)
        self._mic_last = np.zeros(BLOCK)
        self._mic_spectrum = np.zeros(BINS, np.complex128)
        self._predicted = np.zeros(BINS, np.complex128)
        self._tail = np.zeros(BLOCK)  # the second half of the last predicted window
        self._residual = np.zeros(BINS, np.complex128)  # the last window's residual spectrum
        self._suppressed_tail = np.zeros(BLOCK)  # the second half of the last suppressed residual window
        self.suppressed = np.zeros(BLOCK)  # the previous block's residual less what echo it is expected to hold

    def refill(self, blocks: np.ndarray) -> None:
        """Take `blocks` (oldest first, BLOCK samples each) as the reference's recent past, as the stream lies
        after a new placement, so the model predicts from it at once; the statistics and weights are kept."""
        last = np.zeros(BLOCK)
        for block in blocks[-self.partitions :]:
            self._spectra[:, 1:] = self._spectra[:, :-1]
            self._spectra[:, 0] = np.fft.rfft(np.concatenate([last, block]) * TAPER)
            last = block.astype(np.float64)
        self._ref_last = last
        self._predicted = np.einsum("bk,bk->b", self._weights, self._spectra)
        self._tail = (np.fft.irfft(self._predicted, WINDOW) * TAPER)[BLOCK:]

    @property
    def solved(self) -> bool:
        """The model has weights (from this placement of the reference or an earlier one)."""
        return bool(np.any(self._weights))

    def push(self, ref: np.ndarray, mic: np.ndarray) -> np.ndarray:
        """Take the next reference and microphone blocks; returns the previous microphone block less its echo."""
        ref64, mic64 = ref.astype(np.float64), mic.astype(np.float64)
        self._spectra[:, 1:] = self._spectra[:, :-1]
        self._spectra[:, 0] = np.fft.rfft(np.concatenate([self._ref_last, ref64]) * TAPER)
        self._mic_spectrum = np.fft.rfft(np.concatenate([self._mic_last, mic64]) * TAPER)
        self._predicted = np.einsum("bk,bk->b", self._weights, self._spectra)
        predicted = np.fft.irfft(self._predicted, WINDOW) * TAPER
        residual = self._mic_last - (self._tail + predicted[:BLOCK])
        self._tail = predicted[BLOCK:]
        self._residual = self._mic_spectrum - self._predicted
        power = np.square(np.abs(self._residual))
        expected = self.leftover() * np.square(np.abs(self._predicted))
        gain = np.sqrt(np.maximum(SUPPRESS_FLOOR, 1.0 - SUPPRESS_OVER * expected / (power + 1e-20)))
        kept = np.fft.irfft(self._residual * gain, WINDOW) * TAPER
        self.suppressed = self._suppressed_tail + kept[:BLOCK]
        self._suppressed_tail = kept[BLOCK:]
        self._ref_last, self._mic_last = ref64, mic64
        return residual

    def learn(self, echo_alone: bool, leftover: bool = True) -> None:
        """Add the last pushed block to the statistics: its microphone where it held echo alone, else (a user
        spoke) the model's own prediction, so the user's voice is not learned as echo; solves every SOLVE_EVERY
        blocks of echo alone."""
        x = self._spectra
        row = FORGET * self._rows[(self._blocks - 1) % self.partitions] + x[:, :1] * x.conj()
        self._blocks += 1
        self._rows[(self._blocks - 1) % self.partitions] = row
        target = self._mic_spectrum if echo_alone else self._predicted
        self._cross *= FORGET
        self._cross += x * target.conj()[:, None]
        self._fresh += echo_alone
        if echo_alone and leftover and self.solved:
            self._pending.append((np.square(np.abs(self._residual)), np.square(np.abs(self._predicted))))
            if len(self._pending) > SUPPRESS_PENDING:
                left, echo = self._pending.popleft()
                self._left = SUPPRESS_FORGET * self._left + left
                self._echo = SUPPRESS_FORGET * self._echo + echo
        self._learned += echo_alone
        every = SOLVE_EVERY if self._learned < YOUNG_BLOCKS else SOLVE_EVERY_LATER
        if self._learned >= SOLVE_AFTER and self._fresh >= every:
            self._fresh = 0
            self._solve()

    def forget_leftover(self) -> None:
        """The reference was placed anew (it may be off by a few samples): what the residual keeps of the echo is
        learned again; until then each bin is turned down by all of the predicted echo."""
        self._left = np.zeros(BINS)
        self._echo = np.zeros(BINS)
        self._pending.clear()

    def forget_pending(self) -> None:
        """A user was found: the blocks not yet counted in the leftover statistics may hold their first syllables."""
        self._pending.clear()

    def leftover(self) -> np.ndarray:
        """Per bin, the share of the predicted echo's power the residual keeps on echo alone (1 until learned),
        smoothed over neighbouring bins."""
        ratio = np.where(self._echo > 0, self._left / (self._echo + 1e-30), 1.0)
        smooth = np.convolve(ratio, np.ones(SUPPRESS_SMOOTH) / SUPPRESS_SMOOTH, mode="same")
        kept: np.ndarray = np.minimum(smooth, 1.0)
        return kept

    def _solve(self) -> None:
        k = self.partitions
        upper = np.zeros((BINS, k, k), np.complex128)
        for age in range(k):  # entry (age, l) for l >= age: the row of `age` blocks ago, lag l - age
            upper[:, age, age:] = self._rows[(self._blocks - 1 - age) % k, :, : k - age]
        gram = upper + upper.conj().transpose(0, 2, 1)
        diagonal = np.real(upper[:, np.arange(k), np.arange(k)])  # counted twice above
        gram[:, np.arange(k), np.arange(k)] = diagonal + (RIDGE * diagonal[:, :1] + 1e-12)
        self._weights = np.linalg.solve(gram, self._cross[:, :, None])[:, :, 0].conj()
