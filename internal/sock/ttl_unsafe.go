package sock

import "unsafe"

// unsafePointer is the one place this package needs package unsafe: a
// control message header laid over its bytes.
func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }
