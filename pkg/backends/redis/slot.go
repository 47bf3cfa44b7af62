package redis

import "strings"

// numSlots is the Redis Cluster hash-slot count.
const numSlots = 16384

// slotTable is the CRC16-XMODEM table Redis Cluster hashes keys with. Each Store builds
// its own (the package keeps no mutable state).
type slotTable [256]uint16

func newSlotTable() *slotTable {
	var t slotTable
	for i := range t {
		crc := uint16(i) << 8
		for j := 0; j < 8; j++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return &t
}

// slot returns the cluster slot of key, honouring a {hash tag} exactly as Redis does:
// the first '{' and the first '}' after it, when something lies between them.
func (t *slotTable) slot(key string) int {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc = crc<<8 ^ t[byte(crc>>8)^key[i]]
	}
	return int(crc) % numSlots
}
