package shortcode

import "sync"

// The word list: 2048 pronounceable four-letter words, generated here
// (not copied from any list): consonant, vowel, consonant, and a final
// "a" or "o" ("kato", "bira", "zemo"): 16 × 4 × 16 × 2 words, 11 bits
// each. Every word has the same shape, so none is a prefix of another
// and a dropped or doubled letter is never another word of the list.
const (
	consonants  = "bdfghjklmnprstvz" // 16
	vowels      = "aeio"             // 4
	finalVowels = "ao"               // 2
	// WordBits is the entropy of one word.
	WordBits = 11
	// listLen is the number of words, 1<<WordBits.
	listLen = len(consonants) * len(vowels) * len(consonants) * len(finalVowels)
)

var (
	wordsOnce sync.Once
	wordList  []string
	wordIndex map[string]uint16
)

// words returns the list, built on first use.
func words() ([]string, map[string]uint16) {
	wordsOnce.Do(func() {
		wordList = make([]string, 0, listLen)
		wordIndex = make(map[string]uint16, listLen)
		for _, c1 := range consonants {
			for _, v1 := range vowels {
				for _, c2 := range consonants {
					for _, v2 := range finalVowels {
						w := string([]rune{c1, v1, c2, v2})
						wordIndex[w] = uint16(len(wordList))
						wordList = append(wordList, w)
					}
				}
			}
		}
	})
	return wordList, wordIndex
}

// Word returns word i of the list (i below 2048).
func Word(i uint16) string {
	l, _ := words()
	return l[int(i)%len(l)]
}

// WordIndex returns the index of w in the list, and whether it is there.
func WordIndex(w string) (uint16, bool) {
	_, idx := words()
	i, ok := idx[w]
	return i, ok
}
