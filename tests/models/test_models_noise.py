"""models.noise: the numbers every seed gives, pinned, so moving this code changes no result."""

import numpy as np
import tensorflow as tf

from models import noise


def test_evaluation_seeds_are_the_numbers_evaluations_used_before():
    # Values of pipeline.evaluation.episode_seed / _idle_seed / noise_seeds before they moved here.
    assert [noise.episode_seed(0, e) for e in range(3)] == [3864711974, 2435321588, 2827424807]
    assert noise.episode_seed(2**40 + 7, 5) == 64211742
    assert [noise.idle_seed(3, s) for s in range(2)] == [2059554481, 890629860]
    assert noise.noise_seeds(7, [0, 1, 2], [0, 0, 5]).tolist() == [
        1603648013000153456, 5292735762900776995, 1665964713082712127]
    assert noise.noise_seeds(-1, [3], [4]).tolist() == [4187363561752703472]
    assert noise.noise_seeds(7, np.arange(4), np.arange(4)).dtype == np.int64


def test_row_seeded_noise_depends_on_each_rows_seed_only():
    seeds = tf.constant([5, 9, 5], tf.int64)
    got = noise.row_seeded_noise(seeds, 2, 3).numpy()
    assert got.shape == (3, 2, 3)
    for row, seed in enumerate([5, 9, 5]):
        want = tf.random.stateless_normal([2, 3], seed=tf.constant([seed, noise.SEED_SALT], tf.int64))
        np.testing.assert_array_equal(got[row], want.numpy())
    np.testing.assert_array_equal(got[0], got[2])


def test_stream_keys_and_seed_words():
    np.testing.assert_array_equal(noise.stream_key(4, noise.ACT_STREAM, 11).numpy(), [4 * 3 + 2, 11])
    assert len({noise.TRAIN_STREAM, noise.EVAL_STREAM, noise.ACT_STREAM}) == noise.NUM_STREAMS
    got = noise.seeded_normal([2, 2], tf.constant(7, tf.int64), noise.ACT_SEED_WORD)
    np.testing.assert_array_equal(got.numpy(), tf.random.stateless_normal([2, 2], seed=[7, -1]).numpy())


def test_fresh_noise_differs_between_calls():
    for stream, compiled in ((None, False), (noise.NoiseStream(), True)):
        draw = tf.function(lambda: noise.fresh_noise(2, 1, 3, stream, compiled), jit_compile=compiled)
        first, second = draw().numpy(), draw().numpy()
        assert first.shape == (2, 1, 3) and not np.array_equal(first, second)
    assert noise.new_noise_stream(False) is None and isinstance(noise.new_noise_stream(True), noise.NoiseStream)
