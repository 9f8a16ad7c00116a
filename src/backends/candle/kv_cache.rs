//! One layer's keys and values, written in place into room that grows a
//! chunk at a time. Appending with `Tensor::cat` copied the layer's whole
//! cache every token into a fresh allocation (at 850 positions on the
//! bench model, ~4 % of a token: the copy and the kernel zeroing the new
//! pages).

use candle_core::Tensor;

/// Positions added to a layer's room when it is full: the cache is copied
/// once per 256 tokens instead of every token, and at most 255 positions
/// of room go unused.
const GROWTH: usize = 256;

/// Keys and values `(1, kv_heads, room, head_dim)` each, of which the first
/// `len` positions are in use. Not `Clone`: a clone would share the room
/// that the next [`append`](LayerCache::append) writes into.
#[derive(Debug, Default)]
pub(super) struct LayerCache {
    room: Option<(Tensor, Tensor)>,
    len: usize,
}

impl LayerCache {
    /// Appends `keys` and `values` `(1, kv_heads, new, head_dim)` after the
    /// positions in use; returns every position's keys and values (views of
    /// the room: an append after a truncation writes over what they show).
    pub(super) fn append(
        &mut self,
        keys: &Tensor,
        values: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let needed = self.len + keys.dim(2)?;
        let room = match &self.room {
            Some((k, _)) => k.dim(2)?,
            None => 0,
        };
        if room < needed {
            // On an error the old room stays as it was.
            let capacity = needed.next_multiple_of(GROWTH);
            let old = self.room.as_ref();
            let grown = (
                self.grown(keys, old.map(|(k, _)| k), capacity)?,
                self.grown(values, old.map(|(_, v)| v), capacity)?,
            );
            self.room = Some(grown);
        }
        let Some((room_keys, room_values)) = &self.room else {
            candle_core::bail!("the KV cache has no room after growing");
        };
        room_keys.slice_set(&keys.contiguous()?, 2, self.len)?;
        room_values.slice_set(&values.contiguous()?, 2, self.len)?;
        let all = (
            room_keys.narrow(2, 0, needed)?,
            room_values.narrow(2, 0, needed)?,
        );
        self.len = needed;
        Ok(all)
    }

    /// Room for `capacity` positions shaped as `like`, holding the positions
    /// in use of `old` (a smaller room).
    fn grown(
        &self,
        like: &Tensor,
        old: Option<&Tensor>,
        capacity: usize,
    ) -> candle_core::Result<Tensor> {
        let mut dims = like.dims().to_vec();
        if let Some(positions) = dims.get_mut(2) {
            *positions = capacity;
        }
        let room = Tensor::zeros(dims, like.dtype(), like.device())?;
        if let Some(old) = old.filter(|_| self.len > 0) {
            // The whole old room, contiguous: positions past `len` are
            // copied too, and overwritten before they are read.
            room.slice_set(old, 2, 0)?;
        }
        Ok(room)
    }

    /// Keeps the first `positions` positions. The room stays allocated at
    /// its largest size for the model's lifetime (at most the context and
    /// 255 positions per layer): the next request writes into it.
    pub(super) fn truncate(&mut self, positions: usize) {
        self.len = self.len.min(positions);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp};

    use super::*;

    fn positions(from: usize, count: usize) -> Tensor {
        // Two heads of width 3; each value names its head and position.
        let values: Vec<f32> = (0..2)
            .flat_map(|head| {
                (from..from + count)
                    .flat_map(move |p| (0..3).map(move |_| (head * 10_000 + p) as f32))
            })
            .collect();
        Tensor::from_vec(values, (1, 2, count, 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn appends_grow_past_the_room_and_truncation_rewrites_in_place() {
        let mut cache = LayerCache::default();
        cache
            .append(&positions(0, 200), &positions(0, 200))
            .unwrap();
        // Past the first 256 positions of room: the cache is copied once.
        let (keys, values) = cache
            .append(&positions(200, 100), &positions(200, 100))
            .unwrap();
        assert_eq!(keys.dims(), [1, 2, 300, 3]);
        let expected = Tensor::cat(&[positions(0, 200), positions(200, 100)], 2).unwrap();
        for tensor in [&keys, &values] {
            let same = tensor.eq(&expected).unwrap().min_all().unwrap();
            assert_eq!(same.to_scalar::<u8>().unwrap(), 1);
        }
        // A cut, then new positions written over the old ones.
        cache.truncate(150);
        let (keys, _) = cache
            .append(&positions(5000, 2), &positions(5000, 2))
            .unwrap();
        assert_eq!(keys.dims(), [1, 2, 152, 3]);
        let head_1 = keys.i((0, 1)).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(head_1[149], [10_149.0; 3]);
        assert_eq!(head_1[150], [15_000.0; 3]);
        assert_eq!(head_1[151], [15_001.0; 3]);
        // A cut, then growth past the room: the positions kept are copied.
        cache.truncate(100);
        let room = |cache: &LayerCache| cache.room.as_ref().map(|(k, _)| k.dim(2).unwrap());
        assert_eq!(room(&cache), Some(512), "rewritten in place");
        let (keys, _) = cache
            .append(&positions(7000, 450), &positions(7000, 450))
            .unwrap();
        assert_eq!(room(&cache), Some(768));
        let expected = Tensor::cat(&[positions(0, 100), positions(7000, 450)], 2).unwrap();
        let same = keys.eq(&expected).unwrap().min_all().unwrap();
        assert_eq!(same.to_scalar::<u8>().unwrap(), 1);
        cache.truncate(152);
        // Truncation never lengthens.
        cache.truncate(1000);
        let (keys, _) = cache.append(&positions(0, 1), &positions(0, 1)).unwrap();
        assert_eq!(keys.dim(2).unwrap(), 153);
        assert_eq!(room(&cache), Some(768), "the room is kept");
    }
}
