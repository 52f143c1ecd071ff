"""Special-token ids, which SentencePiece is trained with, so they hold for every vocabulary
written here. Nothing is imported here: any module may depend on this one."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
